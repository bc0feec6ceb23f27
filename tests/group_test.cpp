// lsc train's process group, host side (frontends/lsc/group.h): torchrun's environment read and
// checked, the NCCL id handed from rank 0 to every rank over TCP (strangers and late starters
// included), timeouts that name what is missing, and the launcher's exit status and clean-up.
#include "frontends/lsc/group.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "compiler/errors.h"
#include "tests/test_util.h"

namespace lightseq::lsc {
namespace {

using std::chrono::milliseconds;

std::function<const char*(const char*)> env_of(const std::map<std::string, std::string>& m) {
  return [m](const char* name) -> const char* {
    auto it = m.find(name);
    return it == m.end() ? nullptr : it->second.c_str();
  };
}

const std::map<std::string, std::string> kGood = {{"RANK", "2"},
                                                  {"WORLD_SIZE", "4"},
                                                  {"LOCAL_RANK", "1"},
                                                  {"MASTER_ADDR", "10.0.0.7"},
                                                  {"MASTER_PORT", "29500"}};

TEST(GroupEnv, ReadsTorchrunsVariables) {
  EXPECT_FALSE(group_env(env_of({})).has_value()) << "no WORLD_SIZE: not a group";
  const auto e = group_env(env_of(kGood));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->rank, 2);
  EXPECT_EQ(e->world, 4);
  EXPECT_EQ(e->local_rank, 1);
  EXPECT_EQ(e->addr, "10.0.0.7");
  EXPECT_EQ(e->port, 29500);
}

TEST(GroupEnv, UnderTorchrunRankZeroServesOnThePortAfterItsStore) {
  std::map<std::string, std::string> m = kGood;
  m["TORCHELASTIC_RUN_ID"] = "none";
  EXPECT_EQ(group_env(env_of(m))->port, 29501);
  m["LIGHTSEQ_GROUP_PORT"] = "31000";
  EXPECT_EQ(group_env(env_of(m))->port, 31000);
}

TEST(GroupEnv, NamesWhatIsMissingOrWrong) {
  struct Case {
    std::string var, value, expect;  // value "" : removed
  };
  const std::vector<Case> cases = {
      {"RANK", "", "RANK is not set"},
      {"RANK", "4", "RANK=4: must be this process's rank, below WORLD_SIZE"},
      {"RANK", "-1", "RANK=-1"},
      {"RANK", "1x", "RANK=1x"},
      {"WORLD_SIZE", "0", "WORLD_SIZE=0"},
      {"LOCAL_RANK", "", "LOCAL_RANK is not set"},
      {"MASTER_PORT", "70000", "MASTER_PORT=70000: must be rank 0's TCP port"},
      {"MASTER_PORT", "", "MASTER_PORT is not set"},
      {"MASTER_ADDR", "", "MASTER_ADDR is not set"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.var + "=" + c.value);
    std::map<std::string, std::string> m = kGood;
    if (c.value.empty()) {
      m.erase(c.var);
    } else {
      m[c.var] = c.value;
    }
    try {
      group_env(env_of(m));
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.expect), std::string::npos) << e.what();
    }
  }
}

CommId id_of(char fill) {
  CommId id;
  for (size_t i = 0; i < id.bytes.size(); ++i) id.bytes[i] = static_cast<char>(fill + i);
  return id;
}

GroupEnv member(int rank, int world, int port) {
  GroupEnv e;
  e.rank = rank;
  e.world = world;
  e.local_rank = rank;
  e.addr = "127.0.0.1";
  e.port = port;
  return e;
}

TEST(GroupExchange, EveryRankGetsRankZerosId) {
  const int world = 4, port = free_local_port();
  std::vector<std::future<CommId>> got;
  // The other ranks start first: they retry until rank 0 listens.
  for (int r = world - 1; r >= 0; --r) {
    got.push_back(std::async(std::launch::async, [=] {
      if (r == 0) std::this_thread::sleep_for(milliseconds(300));
      return exchange_id(
          member(r, world, port), [] { return id_of(7); }, milliseconds(20000));
    }));
  }
  for (auto& f : got) EXPECT_EQ(f.get().bytes, id_of(7).bytes);
}

TEST(GroupExchange, AStrangerDoesNotStopIt) {
  const int port = free_local_port();
  auto server = std::async(std::launch::async, [=] {
    return exchange_id(
        member(0, 2, port), [] { return id_of(1); }, milliseconds(20000));
  });
  std::this_thread::sleep_for(milliseconds(200));
  {  // connects, says something else, goes away
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ASSERT_EQ(::send(s, "GET / HTTP/1.0\r\n\r\n", 18, 0), 18);
    ::close(s);
  }
  const CommId mine = exchange_id(
      member(1, 2, port), [] { return id_of(9); }, milliseconds(20000));
  EXPECT_EQ(mine.bytes, id_of(1).bytes);
  EXPECT_EQ(server.get().bytes, id_of(1).bytes);
}

TEST(GroupExchange, TimesOutNamingWhatIsMissing) {
  const int port = free_local_port();
  try {
    exchange_id(
        member(1, 2, port), [] { return id_of(0); }, milliseconds(400));
    ADD_FAILURE() << "a rank without rank 0 returned";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("127.0.0.1:{}", port)), std::string::npos)
        << e.what();
  }
  try {
    exchange_id(
        member(0, 3, port), [] { return id_of(0); }, milliseconds(400));
    ADD_FAILURE() << "rank 0 without the others returned";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 of the 2 other ranks did not connect"),
              std::string::npos)
        << e.what();
  }
}

TEST(GroupExchange, AGroupOfOneNeedsNoNetwork) {
  GroupEnv e = member(0, 1, 1);
  e.addr = "no.such.host.invalid";
  EXPECT_EQ(exchange_id(
                e, [] { return id_of(3); }, milliseconds(100))
                .bytes,
            id_of(3).bytes);
}

TEST(GroupLaunch, EveryRankSeesTheGroupsVariables) {
  const char* script =
      "test \"$WORLD_SIZE\" = 3 && test \"$LOCAL_WORLD_SIZE\" = 3 && test \"$RANK\" = "
      "\"$LOCAL_RANK\" && test \"$MASTER_ADDR\" = 127.0.0.1 && test \"$MASTER_PORT\" -gt 0 && "
      "test \"$NCCL_NVLS_ENABLE\" = 0 && case \"$RANK\" in 0|1|2) exit 0;; esac; exit 9";
  EXPECT_EQ(run_group(3, "/bin/sh", {"-c", script}), 0);
}

TEST(GroupLaunch, TheFirstFailureStopsTheOthers) {
  const auto t0 = std::chrono::steady_clock::now();
  // rank 1 fails at once; the others would run for a minute
  EXPECT_EQ(run_group(3, "/bin/sh", {"-c", "test \"$RANK\" = 1 && exit 5; exec sleep 60"},
                      milliseconds(2000)),
            5);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
  // a rank that ignores SIGTERM is killed after the grace period
  EXPECT_EQ(run_group(2, "/bin/sh",
                      {"-c",
                       "test \"$RANK\" = 0 && exit 3; trap '' TERM; sleep 60 & wait; "
                       "sleep 60"},
                      milliseconds(300)),
            3);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(40));
  EXPECT_EQ(run_group(1, "/no/such/program", {}), 127);
}

}  // namespace
}  // namespace lightseq::lsc
