// The `stavid` command line as a library: run_cli takes the arguments (without the program name) and
// the streams to write to, so tests run it in-process against a fake server and read its output.
//
//   stavid generate --prompt TEXT [options] -o out.mp4   submit, follow with progress, write the MP4
//   stavid generate --prompt TEXT --detach               submit and print the job id
//   stavid jobs list|get ID|watch ID [-o out.mp4]|cancel ID
//   stavid models
//   stavid health [--service NAME]
//
// Exit codes: see client/exit_codes.h (and `stavid --help`).
#pragma once

#include <atomic>
#include <map>
#include <ostream>
#include <string>
#include <vector>

namespace stavid::client {

struct CliIo {
  std::ostream& out;  // results: paths, summaries, tables, JSON
  std::ostream& err;  // progress, diagnostics
  bool err_is_tty = false;  // draw a live progress bar on `err`
  // STAVID_SERVER and STAVID_TOKEN (main fills them from the environment).
  std::map<std::string, std::string> env;
  // Set (e.g. by a SIGINT handler) to cancel the running call: generate then exits 7, a watch 130.
  const std::atomic<bool>* interrupted = nullptr;
};

int run_cli(const std::vector<std::string>& args, CliIo& io);

// The full `stavid --help` text, exit codes included.
const char* cli_help();

}  // namespace stavid::client
