// signature.cuh — how a kernel's calling convention is declared: once, in its family's
// <family>.sig.cuh beside the template. A signature names the template parameters (and how the
// derived ones follow from the others), every run-time parameter with its C type and role, the
// launch shape and each scratch buffer's extent. Everything else is derived from it: the name
// expression and label (compiler/codegen), a step's reads and writes (compiler/planner), the
// argument packing of the one generic launch path (runtime/launch.cpp), and the check that it
// matches the kernel NVRTC compiles (tests/signature_test.cpp, through the lowered names).
// Host-only: NVRTC never sees it (the templates include only their family's traits).
#pragma once

#if defined(__CUDACC_RTC__)
#error "signature.cuh is host-only"
#endif

#include <array>

#include "common/config.cuh"
#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern::sig {

enum class TKind : int {
  kDType,  // T: float, __half or __nv_bfloat16 (its value in Values: the element bytes)
  kInt,    // an integer constant
  kEnum,   // an enumerator of `enum_info`
};

inline constexpr int kMaxTParams = 8;
inline constexpr int kMaxParams = 24;

// What a launch is computed from: template values (dtype: element bytes; enum: its value) and
// the scalar run-time parameters, both by position in the signature.
struct Values {
  int64_t t[kMaxTParams] = {};
  int64_t i[kMaxParams] = {};  // integer scalars (kI64, kI32)
  double f[kMaxParams] = {};   // floating-point scalars (kF32)
};

struct TParam {
  const char* name;  // as in the template: "kHidden"
  TKind kind;
  const char* label;  // key in the kernel label ("h" gives "h=512"); nullptr for T (shown as dtype)
  const EnumInfo* enum_info = nullptr;
  // A parameter that follows from the earlier ones (the vector width from the row length): the
  // code generator computes it; nobody sets it.
  int64_t (*derive)(const Values&) = nullptr;
};

// How a run-time parameter is used. Pointers to tensors: kIn (read), kOut (written `=`),
// kOutAcc (`+=` into what the caller or an earlier step put there), kScratch (a buffer the
// runtime provides for this launch and the steps after it in the same call), kErrorFlag (an int
// the kernel sets to 1 and never clears). kScalar: a value the plan gives (a size, an epsilon).
// kDropout: DropoutArgs from the step's dropout site and the call's seed and offset.
// kGradMode: Accumulate::kAdd when the call accumulates parameter gradients, else kOverwrite.
// kTensorList: a device table of chunks over several tensors (multi-tensor kernels), which the
// runtime builds from the tensors bound to its slots (TensorList).
enum class Role : int {
  kIn,
  kOut,
  kOutAcc,
  kScratch,
  kErrorFlag,
  kScalar,
  kDropout,
  kGradMode,
  kTensorList
};

// The C type of a parameter: how it is packed, what the NVRTC-lowered kernel must take, and what
// element type a bound tensor must have.
enum class CType : int {
  kTPtr,
  kConstTPtr,
  kF32Ptr,
  kConstF32Ptr,
  kConstI64Ptr,
  kConstU8Ptr,
  kU8Ptr,
  kI32Ptr,
  kConstI32Ptr,
  kConstAdamChunkPtr,
  kOptimStatePtr,
  kConstOptimStatePtr,
  kI64,
  kI32,
  kF32,
  kDropoutArgs,
  kAccumulate,
};

constexpr bool is_pointer(CType c) { return c <= CType::kConstOptimStatePtr; }

// A scratch buffer's extent for one launch: rows x cols elements of the pointer's type.
struct Extent {
  int64_t rows, cols;
};

enum class Nullable : int { kNo, kYes };
enum class ScratchInit : int { kNone, kZero };  // whether the runtime zeroes the buffer first

// A tensor list (Role::kTensorList): a device table of chunks, each chunk one pointer per slot
// (in slot order, each `chunk_elems` elements further into its tensor than the chunk before),
// then the chunk's element count as int64_t. Every slot's tensor has the same element count; a
// nullable slot may be left unbound (a null pointer in every chunk).
struct ListSlot {
  const char* name;  // bound in a plan as "<list>.<slot>": "chunks.grad"
  CType type;        // a pointer type
  Role role;         // kIn (read) or kOutAcc (updated in place)
  Nullable nullable = Nullable::kNo;
};
struct TensorList {
  const ListSlot* slots;
  int n_slots;
  int64_t chunk_elems;
};

struct Param {
  const char* name;  // as in the template: "grad_out"
  Role role;
  CType type;
  Nullable nullable = Nullable::kNo;  // may be null (unused by some template values)
  // kScratch: its extent (nullptr: the plan's tensor shape says it) and initial contents.
  Extent (*extent)(const Values&) = nullptr;
  ScratchInit init = ScratchInit::kNone;
  const TensorList* list = nullptr;  // kTensorList: its slots
};

struct Launch {
  GridDim grid;
  int block;
  int smem_bytes;
};

// How codegen groups a kernel's instances into NVRTC programs: with its family's other kernels
// (kFamily: one header parse for all), or in a program of its own (kOwn: a kernel whose
// instantiation is expensive compiles in parallel with the rest instead of lengthening its
// family's serial NVRTC run; compiler/codegen/program.h).
enum class Program { kFamily, kOwn };

struct Kernel {
  const char* family;  // template file: "layernorm" -> templates/layernorm.cuh
  const char* name;    // "ln_fwd_kernel"
  const TParam* tparams;
  int n_tparams;
  const Param* params;
  int n_params;
  Launch (*launch)(const Values&);
  Program program = Program::kFamily;
  // Why a combination of template values cannot be instantiated (null: it can), from the same
  // constexpr rule the template's static_assert reads; instantiate() throws with it before NVRTC
  // would. Null: every combination instantiates.
  const char* (*reject)(const Values&) = nullptr;
};

// ---- compile-time lookup by name (a misspelt name does not compile) -------------------------
constexpr bool same(const char* a, const char* b) {
  while (*a && *a == *b) ++a, ++b;
  return *a == *b;
}

// The slots of `slots` for a kernel that reads only slot `keep` of the same table: every slot
// kIn, the others nullable (left unbound).
template <int N>
constexpr std::array<ListSlot, N> only_reads(const ListSlot (&slots)[N], const char* keep) {
  std::array<ListSlot, N> out{};
  for (int i = 0; i < N; ++i) {
    out[i] = slots[i];
    out[i].role = Role::kIn;
    if (!same(slots[i].name, keep)) out[i].nullable = Nullable::kYes;
  }
  return out;
}
template <int N>
consteval int index_of(const Param (&ps)[N], const char* name) {
  for (int i = 0; i < N; ++i) {
    if (same(ps[i].name, name)) return i;
  }
  throw "no run-time parameter of that name";
}
template <int N>
consteval int index_of(const TParam (&ts)[N], const char* name) {
  for (int i = 0; i < N; ++i) {
    if (same(ts[i].name, name)) return i;
  }
  throw "no template parameter of that name";
}
template <int NT, int NP>
constexpr Kernel make_kernel(const char* family, const char* name, const TParam (&t)[NT],
                             const Param (&p)[NP], Launch (*launch)(const Values&),
                             Program program = Program::kFamily,
                             const char* (*reject)(const Values&) = nullptr) {
  static_assert(NT <= kMaxTParams && NP <= kMaxParams, "raise kMaxTParams / kMaxParams");
  return Kernel{family, name, t, NT, p, NP, launch, program, reject};
}

// A kernel's template parameters that extend another kernel's: `base` followed by `more`. Use
// `.v` where a template parameter array is taken (make_kernel, index_of).
template <size_t N, size_t M>
struct TParamList {
  TParam v[N + M];
};
template <size_t N, typename... More>
consteval TParamList<N, sizeof...(More)> extend(const TParam (&base)[N], More... more) {
  TParamList<N, sizeof...(More)> out{};
  for (size_t i = 0; i < N; ++i) out.v[i] = base[i];
  size_t i = N;
  ((out.v[i++] = more), ...);
  return out;
}

// The usual derived vector width: 16-byte accesses of T, halved until they divide template
// parameter kSizeIndex (the row length). T is template parameter 0.
template <int kSizeIndex>
int64_t vec_of(const Values& v) {
  return vec_width(static_cast<int>(v.t[0]), v.t[kSizeIndex]);
}

// Shorthands for the signature tables.
inline constexpr TParam kDTypeParam{"T", TKind::kDType, nullptr};
constexpr TParam int_param(const char* name, const char* label,
                           int64_t (*derive)(const Values&) = nullptr) {
  return TParam{name, TKind::kInt, label, nullptr, derive};
}
constexpr TParam enum_param(const char* name, const char* label, const EnumInfo& info) {
  return TParam{name, TKind::kEnum, label, &info};
}
constexpr Param in(const char* n, CType c, Nullable z = Nullable::kNo) {
  return {n, Role::kIn, c, z};
}
constexpr Param out(const char* n, CType c, Nullable z = Nullable::kNo) {
  return {n, Role::kOut, c, z};
}
constexpr Param out_acc(const char* n, CType c, Nullable z = Nullable::kNo) {
  return {n, Role::kOutAcc, c, z};
}
constexpr Param scratch(const char* n, CType c, Extent (*extent)(const Values&), Nullable z,
                        ScratchInit init = ScratchInit::kNone) {
  return {n, Role::kScratch, c, z, extent, init};
}
constexpr Param scalar(const char* n, CType c) { return {n, Role::kScalar, c}; }
constexpr Param error_flag(const char* n) {
  return {n, Role::kErrorFlag, CType::kI32Ptr, Nullable::kYes};
}
constexpr Param dropout(const char* n) { return {n, Role::kDropout, CType::kDropoutArgs}; }
constexpr Param grad_mode(const char* n) { return {n, Role::kGradMode, CType::kAccumulate}; }
constexpr Param tensor_list(const char* n, CType c, const TensorList& l) {
  return {n, Role::kTensorList, c, Nullable::kNo, nullptr, ScratchInit::kNone, &l};
}

}  // namespace lightseq::kern::sig
