// group.h — `lsc train` on several GPUs: one process per GPU, started by `lsc train --gpus N`
// itself or by torchrun (the same environment variables), meeting over TCP to share the NCCL id
// (runtime/comm.h) before they train.
//
//   lsc train spec.json --synthetic copy --gpus 4           # 4 processes on GPUs 0..3
//   torchrun --nproc-per-node 4 $(which lsc) train spec.json --synthetic copy
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "runtime/comm.h"

namespace lightseq::lsc {

// torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK (the GPU ordinal), MASTER_ADDR,
// MASTER_PORT.
struct GroupEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string addr;
  // Where rank 0 serves the id: MASTER_PORT, or under torchrun (whose agent's store holds
  // MASTER_PORT) MASTER_PORT + 1; LIGHTSEQ_GROUP_PORT overrides both.
  int port = 0;
};

// The group this process belongs to, read through `get` (std::getenv): nullopt when WORLD_SIZE is
// unset. Throws Error naming the variable that is missing or wrong and what it must be.
std::optional<GroupEnv> group_env(const std::function<const char*(const char*)>& get);

// Rank 0 makes the id (`make_id`) and serves it at addr:port to the other ranks, which connect
// (retrying until rank 0 listens) and receive it; every rank returns the same id. Throws Error
// when `timeout` passes first, naming the address and how many ranks were still missing.
CommId exchange_id(const GroupEnv& env, const std::function<CommId()>& make_id,
                   std::chrono::milliseconds timeout);

// A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT).
int free_local_port();

// Runs `program args...` as `n` processes, rank i on GPU i, with torchrun's variables set (RANK,
// LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT free) and NVLink
// multicast off (NCCL_NVLS_ENABLE=0 unless set). Each child dies with this process. Returns 0
// when every process exits 0; otherwise, as soon as one fails, stops the others (SIGTERM, then
// SIGKILL after `grace`) and returns the first failure's status (128 + signal when killed).
int run_group(int n, const std::string& program, const std::vector<std::string>& args,
              std::chrono::milliseconds grace = std::chrono::seconds(10));

}  // namespace lightseq::lsc
