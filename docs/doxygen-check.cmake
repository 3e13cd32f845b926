# cmake -DDOXYGEN=<doxygen> -DDOXYFILE=<build>/docs/Doxyfile -P docs/doxygen-check.cmake
#
# The test docs_doxygen: runs doxygen and fails when it prints any warning or error (the
# Doxyfile also sets WARN_AS_ERROR = FAIL_ON_WARNINGS), printing every one of them with a count.
foreach(_var DOXYGEN DOXYFILE)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "doxygen-check.cmake: pass -D${_var}=...")
  endif()
endforeach()
get_filename_component(_dir "${DOXYFILE}" DIRECTORY)
execute_process(COMMAND "${DOXYGEN}" "${DOXYFILE}"
  WORKING_DIRECTORY "${_dir}"
  RESULT_VARIABLE _rc
  OUTPUT_VARIABLE _out
  ERROR_VARIABLE _err)
string(STRIP "${_err}" _err)
if(NOT _err STREQUAL "")
  # One warning per line that starts a message ("file:line: ..."); continuation lines of a
  # message (the list of undocumented parameters) start with blanks.
  string(REGEX MATCHALL "(^|\n)[^ \n][^\n]*" _lines "${_err}")
  list(LENGTH _lines _count)
  message("${_err}\n")  # as doxygen printed them (FATAL_ERROR would re-wrap the lines)
  message(FATAL_ERROR "doxygen printed ${_count} warning(s), above: document the symbol or fix "
                      "the page")
endif()
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "doxygen failed (exit status ${_rc}):\n${_out}")
endif()
message(STATUS "doxygen: no warnings; HTML in ${_dir}/html/index.html")
