// Rendering a job's event stream for a person or a script:
//   Bar   - one status line redrawn in place on a terminal (stage, step i/N, s/step, ETA), with
//           lasting lines (started, stage durations) printed above it;
//   Lines - one plain line per event, for logs and pipes (stderr not a terminal);
//   Json  - one JSON object per event on stdout (bytes replaced by their count), for scripts;
//   Quiet - nothing.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "stavid/v1/video.pb.h"

namespace stavid::client {

enum class OutputMode { Bar, Lines, Json, Quiet };

class ProgressPrinter {
 public:
  // Bar and Lines write to `err`, Json to `out`.
  ProgressPrinter(OutputMode mode, std::ostream& out, std::ostream& err);
  ~ProgressPrinter() { close(); }

  void on_event(const stavid::v1::JobEvent& event);
  // Ends the status line so later output starts on a fresh line. Idempotent.
  void close();

 private:
  void line(const std::string& text);  // a lasting line (above the bar in Bar mode)
  void redraw();

  OutputMode mode_;
  std::ostream& out_;
  std::ostream& err_;
  bool bar_shown_ = false;
  std::string status_;  // the bar's text before the elapsed time
  double elapsed_ = 0;
  uint64_t result_bytes_ = 0;
};

std::string format_duration(double seconds);  // "0.42s", "4m05s", "1h02m"
std::string format_bytes(uint64_t bytes);     // "812 B", "3.4 MiB"
std::string stage_name(stavid::v1::Stage stage);         // "text", "denoise", ...
std::string job_state_name(stavid::v1::JobState state);  // "queued", "running", ...
// One line: frames, size, seed, bytes, the timing breakdown, TeaCache skips, STA sparsity.
std::string format_completed(const stavid::v1::JobCompleted& completed);
// The event as one line of JSON (proto field names); chunk and preview bytes become "data_bytes".
std::string event_to_json(const stavid::v1::JobEvent& event);
// Any message as one line of JSON with proto field names.
std::string message_to_json(const google::protobuf::Message& message);

}  // namespace stavid::client
