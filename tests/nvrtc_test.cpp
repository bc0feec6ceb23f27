// nvrtc_test.cpp — the NVRTC driver: arch parsing and target selection, options, cubin / PTX
// output with lowered names, CompileError contents and the dumped source, parallel compiles.
// Runs without a GPU (NVRTC only).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "compiler/errors.h"
#include "compiler/nvrtc/nvrtc_compiler.h"
#include "tests/test_util.h"

namespace lightseq {
namespace {

namespace fs = std::filesystem;

using test::ScopedEnv;
using test::TempDir;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A template kernel instantiated through a name expression, like the generator's programs.
ProgramSource scale_program(const std::string& tag = "0") {
  ProgramSource p;
  p.name = "test_scale:f32:" + tag;
  p.source =
      "namespace lightseq::kern {\n"
      "template <typename T, int kFactor>\n"
      "__global__ void scale_kernel(T* y, const T* x, int n) {\n"
      "  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
      "  if (i < n) y[i] = x[i] * T(kFactor);\n"
      "}\n"
      "}  // namespace lightseq::kern\n"
      "// " +
      tag + "\n";
  p.labels = {"scale:f32:factor=2", "scale:f32:factor=3"};
  p.name_expressions = {"&lightseq::kern::scale_kernel<float, 2>",
                        "&lightseq::kern::scale_kernel<float, 3>"};
  return p;
}

bool is_elf(const std::vector<char>& image) {
  return image.size() > 20 && std::memcmp(image.data(),
                                          "\x7f"
                                          "ELF",
                                          4) == 0;
}

bool contains(const std::vector<char>& image, const std::string& needle) {
  return std::search(image.begin(), image.end(), needle.begin(), needle.end()) != image.end();
}

TEST(NvrtcArch, ParsesTheDocumentedForms) {
  EXPECT_EQ(parse_arch("sm_80"), 80);
  EXPECT_EQ(parse_arch("80"), 80);
  EXPECT_EQ(parse_arch("8.0"), 80);
  EXPECT_EQ(parse_arch("sm_90a"), 90);
  EXPECT_EQ(parse_arch("9.0a"), 90);
  EXPECT_EQ(parse_arch("sm_100f"), 100);
  EXPECT_EQ(parse_arch("10.0"), 100);
  EXPECT_EQ(parse_arch("12.1"), 121);
  EXPECT_EQ(canonical_arch("80"), "sm_80");
  EXPECT_EQ(canonical_arch("8.6"), "sm_86");
  EXPECT_EQ(canonical_arch("9.0a"), "sm_90a");
  EXPECT_EQ(canonical_arch("sm_100f"), "sm_100f");
  EXPECT_EQ(validate_arch("sm_70"), "sm_70");
  EXPECT_EQ(validate_arch("90"), "sm_90");
}

TEST(NvrtcArch, RejectsJunkListingTheValidForms) {
  for (const char* junk :
       {"", "sm_", "sm80", "ampere", "sm_8", "sm_080", "compute_80", "sm_80b", "sm_80a", "sm_90f",
        "8.", ".0", "8.00", "sm_8.0", "1000", "sm_90 ", "a", "SM_80"}) {
    try {
      parse_arch(junk);
      ADD_FAILURE() << "'" << junk << "' was accepted";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(std::string("'") + junk + "'"), std::string::npos) << message;
      for (const char* form : {"\"sm_80\"", "\"sm_90a\"", "\"80\"", "\"8.0\""}) {
        EXPECT_NE(message.find(form), std::string::npos) << form << " missing in: " << message;
      }
    }
  }
}

TEST(NvrtcArch, ValidateRejectsArchsOlderThanVolta) {
  try {
    validate_arch("sm_60");
    FAIL() << "sm_60 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs sm_70"), std::string::npos) << e.what();
  }
  EXPECT_THROW(validate_arch("5.2"), Error);
  EXPECT_THROW(validate_arch("junk"), Error);
}

// The runtime's target per compute capability: Hopper's arch-specific sm_90a (the fused
// attention's wgmma), plain sm_NN elsewhere; both valid and compilable here.
TEST(NvrtcArch, TheJitTargetIsSm90aOnHopperAndThePlainArchElsewhere) {
  EXPECT_EQ(jit_target(90), "sm_90a");
  EXPECT_EQ(jit_target(80), "sm_80");
  EXPECT_EQ(jit_target(89), "sm_89");
  EXPECT_EQ(jit_target(100), "sm_100");
  EXPECT_EQ(validate_arch(jit_target(90)), "sm_90a");
  EXPECT_EQ(parse_arch(jit_target(90)), 90);
}

TEST(NvrtcTarget, CubinWhenTheArchIsSupported) {
  const std::vector<int> supported = {75, 80, 86, 90, 100};
  NvrtcTarget t = select_nvrtc_target("sm_90", supported);
  EXPECT_EQ(t.arch_option, "--gpu-architecture=sm_90");
  EXPECT_FALSE(t.is_ptx);
  t = select_nvrtc_target("9.0a", supported);
  EXPECT_EQ(t.arch_option, "--gpu-architecture=sm_90a");
  EXPECT_FALSE(t.is_ptx);
}

TEST(NvrtcTarget, PtxOfTheNewestOlderArchWhenTheArchIsTooNew) {
  const std::vector<int> supported = {100, 75, 90, 80};  // order does not matter
  NvrtcTarget t = select_nvrtc_target("sm_95", supported);
  EXPECT_EQ(t.arch_option, "--gpu-architecture=compute_90");
  EXPECT_TRUE(t.is_ptx);
  t = select_nvrtc_target("sm_120a", supported);  // the suffix does not carry over to PTX
  EXPECT_EQ(t.arch_option, "--gpu-architecture=compute_100");
  EXPECT_TRUE(t.is_ptx);
  t = select_nvrtc_target("sm_200", nvrtc_supported_archs());
  EXPECT_EQ(t.arch_option,
            "--gpu-architecture=compute_" + std::to_string(nvrtc_supported_archs().back()));
  EXPECT_TRUE(t.is_ptx);
}

TEST(NvrtcTarget, ErrorsWhenEverySupportedArchIsNewer) {
  try {
    select_nvrtc_target("sm_70", std::vector<int>{75, 80});
    FAIL() << "sm_70 accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("cannot compile for sm_70"), std::string::npos) << message;
    EXPECT_NE(message.find("sm_75, sm_80"), std::string::npos) << message;
  }
}

TEST(NvrtcInfo, VersionAndSupportedArchs) {
  EXPECT_TRUE(std::regex_match(nvrtc_version(), std::regex("[0-9]+\\.[0-9]+"))) << nvrtc_version();
  const std::vector<int> archs = nvrtc_supported_archs();
  EXPECT_TRUE(std::is_sorted(archs.begin(), archs.end()));
  EXPECT_NE(std::find(archs.begin(), archs.end(), 80), archs.end());
  EXPECT_NE(std::find(archs.begin(), archs.end(), 90), archs.end());
}

TEST(NvrtcOptions, AreExactlyTheDecidedFlags) {
  ScopedEnv include("LIGHTSEQ_CUDA_INCLUDE", std::nullopt);
  const std::vector<std::string> options = nvrtc_options("sm_80");
  ASSERT_GE(options.size(), 5u);
  EXPECT_EQ(options.front(), "--gpu-architecture=sm_80");
  EXPECT_EQ(options[1], "-std=c++17");
  EXPECT_EQ(options[2], "-I" + cuda_include_dir());
  EXPECT_EQ(options[options.size() - 2], "-lineinfo");
  EXPECT_EQ(options.back(), "--fmad=true");
  for (const std::string& option : options) {
    EXPECT_EQ(option.find("fast_math"), std::string::npos);
    EXPECT_EQ(option.find("pch"), std::string::npos);
  }
  EXPECT_EQ(nvrtc_options("8.0"), options);
  EXPECT_TRUE(fs::exists(fs::path(cuda_include_dir()) / "cuda_fp16.h")) << cuda_include_dir();
}

TEST(NvrtcOptions, IncludeDirComesFromTheEnvironmentWhenSet) {
  ScopedEnv include("LIGHTSEQ_CUDA_INCLUDE", "/opt/cuda-x/include");
  EXPECT_EQ(cuda_include_dir(), "/opt/cuda-x/include");
  const std::vector<std::string> options = nvrtc_options("sm_90");
  EXPECT_NE(std::find(options.begin(), options.end(), "-I/opt/cuda-x/include"), options.end());
}

TEST(NvrtcCompile, CubinAndLoweredNamesForSm80AndSm90) {
  for (const char* arch : {"sm_80", "sm_90"}) {
    SCOPED_TRACE(arch);
    const ProgramSource program = scale_program();
    const CompiledProgram compiled = compile_program(program, arch);
    EXPECT_EQ(compiled.arch, arch);
    EXPECT_FALSE(compiled.is_ptx);
    ASSERT_TRUE(is_elf(compiled.image));
    // ELF e_machine (offset 18, little-endian) is EM_CUDA = 190.
    EXPECT_EQ(static_cast<uint8_t>(compiled.image[18]), 190);
    ASSERT_EQ(compiled.lowered_names.size(), 2u);
    EXPECT_NE(compiled.lowered_names[0], compiled.lowered_names[1]);
    for (const std::string& name : compiled.lowered_names) {
      EXPECT_TRUE(name.starts_with("_ZN8lightseq4kern12scale_kernel")) << name;
      EXPECT_TRUE(contains(compiled.image, name)) << name << " not in the cubin's symbols";
    }
  }
}

TEST(NvrtcCompile, BareNumberArchGivesTheCanonicalArch) {
  const CompiledProgram compiled = compile_program(scale_program(), "8.6");
  EXPECT_EQ(compiled.arch, "sm_86");
  EXPECT_TRUE(is_elf(compiled.image));
}

TEST(NvrtcCompile, HeadersAreServedFromMemory) {
  const EmbeddedFile headers[] = {
      {"common/twice.cuh",
       "#pragma once\n#include \"common/one.cuh\"\n"
       "__device__ inline float twice(float x) { return x * kTwo; }\n"},
      {"common/one.cuh", "#pragma once\nconstexpr float kTwo = 2.0f;\n"},
  };
  ProgramSource program;
  program.name = "twice";
  program.source =
      "#include \"common/twice.cuh\"\n"
      "#include <cuda_fp16.h>\n"
      "extern \"C\" __global__ void twice_kernel(float* y) { y[0] = twice(y[0]); }\n";
  program.labels = {"twice"};
  program.name_expressions = {"twice_kernel"};
  const CompiledProgram compiled = compile_program(program, "sm_90", headers);
  EXPECT_TRUE(is_elf(compiled.image));
  ASSERT_EQ(compiled.lowered_names.size(), 1u);
  EXPECT_EQ(compiled.lowered_names[0], "twice_kernel");
}

TEST(NvrtcCompile, BrokenProgramThrowsCompileErrorWithEverything) {
  TempDir dump;
  ScopedEnv env("LIGHTSEQ_DUMP_DIR", dump.path().string());
  ProgramSource program = scale_program();
  program.name = "broken:f32:sm_90";
  program.source =
      "// line 1\n"
      "__global__ void broken_kernel(float* y) {\n"
      "  y[0] = undefined_symbol_xyz;\n"
      "}\n";
  try {
    compile_program(program, "sm_90");
    FAIL() << "no CompileError";
  } catch (const CompileError& e) {
    const CompileError::Details& d = e.details();
    EXPECT_EQ(d.program, "broken:f32:sm_90");
    EXPECT_EQ(d.labels, program.labels);
    EXPECT_EQ(d.options, nvrtc_options("sm_90"));
    EXPECT_EQ(d.nvrtc_version, nvrtc_version());
    // NVRTC cites the file it was given, which is the dump's file name, and the line.
    const std::string stem = fs::path(d.source_path).stem().string();
    EXPECT_TRUE(stem.starts_with("broken_f32_sm_90-")) << stem;
    EXPECT_NE(d.log.find(stem + ".cu(3): error"), std::string::npos) << d.log;
    EXPECT_NE(d.log.find("undefined_symbol_xyz"), std::string::npos) << d.log;
    ASSERT_FALSE(d.source_path.empty());
    EXPECT_EQ(fs::path(d.source_path).parent_path(), dump.path());
    EXPECT_EQ(read_text(d.source_path), program.source);
    const std::string report = read_text(fs::path(d.source_path).replace_extension(".log"));
    EXPECT_NE(report.find("--gpu-architecture=sm_90"), std::string::npos) << report;
    EXPECT_NE(report.find("undefined_symbol_xyz"), std::string::npos) << report;
    // The message carries it all, for whoever only prints what().
    const std::string message = e.what();
    for (const std::string& part : {program.name, program.labels[0], program.labels[1],
                                    std::string("--gpu-architecture=sm_90"), nvrtc_version(),
                                    d.source_path, std::string("undefined_symbol_xyz")}) {
      EXPECT_NE(message.find(part), std::string::npos) << part << " missing in:\n" << message;
    }
  }
}

TEST(NvrtcCompile, InvalidNameExpressionIsACompileError) {
  TempDir dump;
  ScopedEnv env("LIGHTSEQ_DUMP_DIR", dump.path().string());
  ProgramSource program = scale_program();
  program.name_expressions[1] = "&lightseq::kern::no_such_kernel<float>";
  try {
    compile_program(program, "sm_80");
    FAIL() << "no CompileError";
  } catch (const CompileError& e) {
    EXPECT_NE(e.details().log.find("no_such_kernel"), std::string::npos) << e.details().log;
    EXPECT_TRUE(fs::exists(e.details().source_path));
  }
}

TEST(NvrtcCompile, DumpDirDefaultsToTheSystemTempDir) {
  ScopedEnv env("LIGHTSEQ_DUMP_DIR", std::nullopt);
  EXPECT_EQ(dump_dir(), fs::temp_directory_path() / "lightseq-dump");
  ScopedEnv set("LIGHTSEQ_DUMP_DIR", "/somewhere/dumps");
  EXPECT_EQ(dump_dir(), fs::path("/somewhere/dumps"));
}

TEST(NvrtcCompile, UnwritableDumpDirStillThrowsTheCompileError) {
  TempDir dir;
  const fs::path file = dir.path() / "a-file";
  std::ofstream(file) << "x";
  ScopedEnv env("LIGHTSEQ_DUMP_DIR", (file / "dumps").string());
  ProgramSource program = scale_program();
  program.source = "__global__ void k() { syntax error here }\n";
  try {
    compile_program(program, "sm_80");
    FAIL() << "no CompileError";
  } catch (const CompileError& e) {
    EXPECT_EQ(e.details().source_path, "");
    EXPECT_NE(e.details().log.find("could not dump the source"), std::string::npos);
    EXPECT_NE(e.details().log.find("error"), std::string::npos);
  }
}

TEST(NvrtcCompile, PtxFallbackForAnArchNewerThanThisNvrtc) {
  const std::vector<int> supported = nvrtc_supported_archs();
  int newer = supported.back() + 1;
  while (std::find(supported.begin(), supported.end(), newer) != supported.end()) ++newer;
  const std::string arch = "sm_" + std::to_string(newer);
  const CompiledProgram compiled = compile_program(scale_program(), arch);
  EXPECT_EQ(compiled.arch, arch);
  EXPECT_TRUE(compiled.is_ptx);
  ASSERT_FALSE(compiled.image.empty());
  EXPECT_EQ(compiled.image.back(), '\0');  // ready for cuModuleLoadData
  const std::string ptx(compiled.image.data());
  EXPECT_NE(ptx.find(".target sm_" + std::to_string(supported.back())), std::string::npos);
  ASSERT_EQ(compiled.lowered_names.size(), 2u);
  EXPECT_NE(ptx.find(".entry " + compiled.lowered_names[0]), std::string::npos);
}

TEST(NvrtcCompile, BadArchsErrorClearly) {
  EXPECT_THROW(compile_program(scale_program(), "ampere"), Error);
  EXPECT_THROW(compile_program(scale_program(), "sm_60"), Error);
  try {
    compile_program(scale_program(), "sm_70");  // valid for lightseq, too old for NVRTC 13
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot compile for sm_70"), std::string::npos);
  }
}

TEST(NvrtcCompile, LabelsAndNameExpressionsMustBeParallel) {
  ProgramSource program = scale_program();
  program.labels.pop_back();
  EXPECT_THROW(compile_program(program, "sm_80"), InternalError);
}

TEST(NvrtcCompile, ParallelCompilesFromSeveralThreads) {
  constexpr int kThreads = 4;
  std::vector<std::string> failures(kThreads);
  std::vector<CompiledProgram> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        results[t] = compile_program(scale_program(std::to_string(t)), t % 2 ? "sm_80" : "sm_90");
      } catch (const std::exception& e) {
        failures[t] = e.what();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(failures[t], "") << "thread " << t;
    EXPECT_TRUE(is_elf(results[t].image)) << "thread " << t;
    EXPECT_EQ(results[t].lowered_names.size(), 2u);
  }
}

// ptxas's verbose report, as NVRTC 13 writes it, parsed per kernel; a kernel it does not name is
// an internal error, not a row of zeros.
TEST(PtxasResources, ParsesEachEntryFunctionsReport) {
  const std::string log =
      "ptxas info    : 0 bytes gmem\n"
      "ptxas info    : Compiling entry function '_Z1av' for 'sm_90'\n"
      "ptxas info    : Function properties for _Z1av\n"
      "ptxas         .     72 bytes stack frame, 60 bytes spill stores, 88 bytes spill loads\n"
      "ptxas info    : Used 128 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]\n"
      "ptxas info    : Compile time = 8.157 ms\n"
      "ptxas info    : Compiling entry function '_Z1bv' for 'sm_90'\n"
      "ptxas info    : Function properties for _Z1bv\n"
      "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
      "ptxas info    : Used 48 registers, used 0 barriers\n"
      "ptxas info    : (C7512) Potential Performance Loss: wgmma.mma_async instructions are "
      "serialized due to insufficient register resources for the function '_Z1av'\n";
  const std::vector<KernelResources> r =
      parse_ptxas_resources(log, {"_Z1bv", "_Z1av"}, {"b:bf16", "a:bf16"});
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].label, "b:bf16");
  EXPECT_EQ(r[0].registers, 48);
  EXPECT_EQ(r[0].stack_frame, 0);
  EXPECT_EQ(r[0].shared, 0);
  EXPECT_EQ(r[1].label, "a:bf16");
  EXPECT_EQ(r[1].registers, 128);
  EXPECT_EQ(r[1].stack_frame, 72);
  EXPECT_EQ(r[1].spill_stores, 60);
  EXPECT_EQ(r[1].spill_loads, 88);
  EXPECT_EQ(r[1].shared, 1024);
  EXPECT_TRUE(r[0].notes.empty());
  ASSERT_EQ(r[1].notes.size(), 1u);
  EXPECT_EQ(r[1].notes[0],
            "(C7512) Potential Performance Loss: wgmma.mma_async instructions are serialized due "
            "to insufficient register resources");
  EXPECT_THROW(parse_ptxas_resources(log, {"_Z1cv"}, {"c:bf16"}), InternalError);
}

}  // namespace
}  // namespace lightseq
