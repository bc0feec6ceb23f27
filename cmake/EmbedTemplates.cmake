# lightseq_embed_templates(OUTPUT <cpp> ROOT <dir> FILES <files...>)
# Writes a C++ source that holds every template file as a raw string, with its path relative to
# ROOT, behind lightseq::embedded_templates(). Regenerated whenever a template changes.
function(lightseq_embed_templates)
  cmake_parse_arguments(ARG "" "OUTPUT;ROOT" "FILES" ${ARGN})
  add_custom_command(
    OUTPUT ${ARG_OUTPUT}
    COMMAND ${CMAKE_COMMAND} -DOUTPUT=${ARG_OUTPUT} -DROOT=${ARG_ROOT}
            -P ${CMAKE_SOURCE_DIR}/cmake/EmbedTemplatesScript.cmake
    DEPENDS ${ARG_FILES} ${CMAKE_SOURCE_DIR}/cmake/EmbedTemplatesScript.cmake
    COMMENT "Embedding kernel templates"
    VERBATIM)
endfunction()
