// The subcommands of `ringattn`. Each registers its flags on the app and returns the function
// that runs it after parsing.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace ringattn::cli {

using Runner = std::function<int()>;

/// `ringattn attention`: forward (and optionally backward) attention on .npy files.
Runner add_attention_command(CLI::App& app);
/// `ringattn compare`: one implementation against float64 attention, OK or FAILED.
Runner add_compare_command(CLI::App& app);
/// `ringattn decode`: flash-decoding of a few queries against a K/V cache.
Runner add_decode_command(CLI::App& app);
/// `ringattn simulate`: the discrete-event simulator of the ring.
Runner add_simulate_command(CLI::App& app);
/// `ringattn demo`: the reference's paths against naive attention on random inputs.
Runner add_demo_command(CLI::App& app);

}  // namespace ringattn::cli
