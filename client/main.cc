// `stavid`: the command-line client (client/cli.h holds the logic). Ctrl-C cancels the running call
// (a generate then cancels its job and exits 7); a second Ctrl-C kills the process at once.
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iostream>

#include "client/cli.h"

namespace {

std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the SIGINT handler needs a lock-free flag");

extern "C" void on_sigint(int) { g_interrupted.store(true); }

}  // namespace

int main(int argc, char** argv) {
  struct sigaction action = {};
  action.sa_handler = on_sigint;
  action.sa_flags = SA_RESETHAND;  // the second Ctrl-C gets the default action
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);

  stavid::client::CliIo io{std::cout, std::cerr, /*err_is_tty=*/false, /*env=*/{}, /*interrupted=*/nullptr};
  io.err_is_tty = ::isatty(STDERR_FILENO) == 1;
  for (const char* name : {"STAVID_SERVER", "STAVID_TOKEN"}) {
    if (const char* value = std::getenv(name)) io.env[name] = value;
  }
  io.interrupted = &g_interrupted;
  const int code = stavid::client::run_cli({argv + 1, argv + argc}, io);
  std::cout.flush();
  return code;
}
