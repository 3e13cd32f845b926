// ringattn: Ring Attention, taught, implemented and simulated. One executable, subcommands:
//   attention  forward (and backward) attention on .npy files, naive | blockwise | ring | mpi-ring
//              | cuda | cuda-ring (virtual ranks on this machine's GPUs; under mpirun one NCCL
//              rank per process)
//   compare    one implementation on generated or given inputs against float64 attention (every
//              element, or sampled rows of long sequences): errors, bounds, OK or FAILED
//   decode     flash-decoding of a few queries against a long K/V cache (CPU reference or cuda)
//   simulate   predict a ring attention layer on a cluster (discrete-event simulator)
//   demo       the reference's paths against naive attention, with errors and timings
// Every error is one line on stderr and a non-zero exit; outputs are written all or none.
#include <CLI/CLI.hpp>
#include <exception>
#include <iostream>
#include <new>
#include <string>

#include "commands.hpp"
#include "ringattn/core/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"ringattn: exact attention over long sequences, blockwise and around a ring of devices"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ringattn 0.1.0");
  std::vector<ringattn::cli::Runner> runners = {ringattn::cli::add_attention_command(app),
                                                ringattn::cli::add_compare_command(app),
                                                ringattn::cli::add_decode_command(app),
                                                ringattn::cli::add_simulate_command(app),
                                                ringattn::cli::add_demo_command(app)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    for (char& c : msg) {
      if (c == '\n') c = ' ';
    }
    std::cerr << "ringattn: error: " << msg << " (see --help)\n";
    return 2;
  }
  try {
    for (const auto& run : runners) {
      const int rc = run();
      if (rc >= 0) return rc;
    }
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "ringattn: error: out of memory (the inputs are too large for this path; "
                 "try --impl blockwise or smaller tiles)\n";
  } catch (const std::exception& e) {
    std::cerr << "ringattn: error: " << e.what() << "\n";
  }
  return 1;
}
