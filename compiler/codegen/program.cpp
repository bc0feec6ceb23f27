#include "compiler/codegen/program.h"

#include <fmt/format.h>

#include <map>

#include "compiler/codegen/embedded_templates.h"
#include "compiler/errors.h"

namespace lightseq::codegen {

std::vector<ProgramSource> generate_programs(const std::vector<KernelInstance>& kernels,
                                             Precision precision) {
  std::map<std::pair<std::string, std::string>, std::vector<const KernelInstance*>> by_family;
  // (family, "" or the kernel of a sig::Program::kOwn signature) -> its instances
  for (const KernelInstance& k : kernels) {
    const bool own = k.sig != nullptr && k.sig->program == sig::Program::kOwn;
    by_family[{k.family, own ? k.kernel : std::string()}].push_back(&k);
  }
  std::vector<ProgramSource> programs;
  for (const auto& [fk, members] : by_family) {
    const std::string& family = fk.first;
    const std::string header = family + ".cuh";
    bool found = false;
    for (const EmbeddedFile& f : templates()) found |= f.path == header;
    if (!found) {
      throw InternalError(
          fmt::format("codegen: kernel family '{}' has no template '{}'", family, header));
    }
    ProgramSource p;
    std::string kernel = fk.second;  // "flash_attn_fwd_kernel" -> "flash_attn_fwd"
    if (kernel.size() > 7 && kernel.ends_with("_kernel")) kernel.resize(kernel.size() - 7);
    p.name = kernel.empty() ? fmt::format("{}:{}", family, to_string(precision))
                            : fmt::format("{}:{}:{}", family, to_string(precision), kernel);
    p.source = fmt::format(
        "// lightseq generated program: {} kernels{}, {}.\n// Instantiated through NVRTC name "
        "expressions:\n",
        family, kernel.empty() ? "" : " (" + kernel + ")", to_string(precision));
    for (const KernelInstance* k : members) {
      p.source += fmt::format("//   {}\n//     = {}\n", k->label, k->name_expression());
      p.labels.push_back(k->label);
      p.name_expressions.push_back(k->name_expression());
    }
    p.source += fmt::format("#include \"{}\"\n", header);
    p.own = !kernel.empty();
    programs.push_back(std::move(p));
  }
  return programs;
}

}  // namespace lightseq::codegen
