// nccl_loader.h — whether NCCL loaded (runtime/nccl_loader.cpp defines NCCL's functions, which
// load it on first call).
#pragma once

#include <string>

namespace lightseq {

// "" once libnccl is loaded (loading it if needed), else why not and how to fix it. Never throws.
std::string nccl_load_error() noexcept;

}  // namespace lightseq
