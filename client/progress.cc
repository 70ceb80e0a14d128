#include "client/progress.h"

#include "client/exit_codes.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

namespace stavid::client {

namespace v1 = stavid::v1;

namespace {

constexpr int kBarWidth = 20;  // keeps the whole status line within 80 columns

std::string fixed(double value, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, value);
  return buf;
}

// "JOB_STATE_QUEUED" -> "queued" given the prefix "JOB_STATE_".
std::string enum_suffix_lower(const std::string& name, const std::string& prefix) {
  std::string s = name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) seconds = 0;
  if (seconds < 60) return fixed(seconds, seconds < 10 ? 2 : 1) + "s";
  const auto total = static_cast<long long>(std::llround(seconds));
  char buf[64];
  if (total < 3600) {
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", total / 60, total % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", total / 3600, (total % 3600) / 60);
  }
  return buf;
}

std::string format_bytes(uint64_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + " B";
  if (bytes < 1024 * 1024) return fixed(bytes / 1024.0, 1) + " KiB";
  return fixed(bytes / (1024.0 * 1024.0), 1) + " MiB";
}

std::string stage_name(v1::Stage stage) { return enum_suffix_lower(v1::Stage_Name(stage), "STAGE_"); }

std::string job_state_name(v1::JobState state) {
  return enum_suffix_lower(v1::JobState_Name(state), "JOB_STATE_");
}

std::string format_completed(const v1::JobCompleted& c) {
  std::string s = std::to_string(c.frames()) + " frames " + std::to_string(c.width()) + "x" +
                  std::to_string(c.height()) + ", seed " + std::to_string(c.seed()) + ", " +
                  format_bytes(c.result_bytes()) + "; total " + format_duration(c.total_seconds()) +
                  " (queue " + format_duration(c.queue_seconds()) + ", text " +
                  format_duration(c.text_seconds()) + ", denoise " + format_duration(c.denoise_seconds()) +
                  ", decode " + format_duration(c.decode_seconds()) + ", encode " +
                  format_duration(c.encode_seconds()) + ")";
  s += "; TeaCache skipped " + std::to_string(c.teacache_skipped_steps()) + " steps";
  s += "; STA sparsity " + fixed(100.0 * c.sta_sparsity(), 1) + "%";
  return s;
}

std::string message_to_json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) return "{}";
  return json;
}

std::string event_to_json(const v1::JobEvent& event) {
  if (!event.has_result() && !event.has_preview()) return message_to_json(event);
  // Bytes do not belong in a progress log: drop them and splice in their count.
  v1::JobEvent copy = event;
  size_t bytes = 0;
  if (copy.has_result()) {
    bytes = copy.result().data().size();
    copy.mutable_result()->clear_data();
  } else {
    bytes = copy.preview().data().size();
    copy.mutable_preview()->clear_data();
  }
  std::string json = message_to_json(copy);
  const std::string key = copy.has_result() ? "\"result\":{" : "\"preview\":{";
  const size_t at = json.find(key);
  if (at == std::string::npos) return json;
  const size_t insert = at + key.size();
  const bool empty_object = insert < json.size() && json[insert] == '}';
  json.insert(insert, "\"data_bytes\":" + std::to_string(bytes) + (empty_object ? "" : ","));
  return json;
}

ProgressPrinter::ProgressPrinter(OutputMode mode, std::ostream& out, std::ostream& err)
    : mode_(mode), out_(out), err_(err) {}

void ProgressPrinter::close() {
  if (bar_shown_) {
    err_ << "\r\033[K" << std::flush;
    bar_shown_ = false;
  }
}

void ProgressPrinter::line(const std::string& text) {
  if (mode_ == OutputMode::Bar) {
    close();
    err_ << text << "\n";
    redraw();
  } else if (mode_ == OutputMode::Lines) {
    err_ << text << "\n" << std::flush;
  }
}

void ProgressPrinter::redraw() {
  if (mode_ != OutputMode::Bar || status_.empty()) return;
  err_ << "\r\033[K" << status_ << "  " << format_duration(elapsed_) << " elapsed" << std::flush;
  bar_shown_ = true;
}

void ProgressPrinter::on_event(const v1::JobEvent& event) {
  if (mode_ == OutputMode::Quiet) return;
  if (mode_ == OutputMode::Json) {
    out_ << event_to_json(event) << "\n" << std::flush;
    return;
  }
  elapsed_ = event.elapsed_seconds();
  const std::string& job = event.job_id();
  switch (event.event_case()) {
    case v1::JobEvent::kQueued: {
      const auto& q = event.queued();
      status_ = "queued: position " + std::to_string(q.position() + 1) + " of " +
                std::to_string(std::max(q.queue_depth(), q.position() + 1));
      line("job " + job + " " + status_);
      break;
    }
    case v1::JobEvent::kStarted: {
      const auto& s = event.started();
      std::string gpus;
      for (int i = 0; i < s.gpus_size(); ++i) {
        if (i > 0) gpus += ',';
        gpus += std::to_string(s.gpus(i));
      }
      status_ = "started";
      line("job " + job + " started on " + (s.worker().empty() ? "a worker" : s.worker()) +
           (gpus.empty() ? "" : " (GPUs " + gpus + ")"));
      break;
    }
    case v1::JobEvent::kStage: {
      const auto& s = event.stage();
      const std::string name = stage_name(s.stage());
      if (s.finished()) {
        line("stage " + name + " done in " + format_duration(s.duration_seconds()));
      } else {
        status_ = name + "...";
        if (mode_ == OutputMode::Lines) line("stage " + name + " started");
      }
      break;
    }
    case v1::JobEvent::kStep: {
      const auto& s = event.step();
      const uint32_t total = std::max(s.total(), s.index() + 1);
      const uint32_t done = s.index() + 1;
      const std::string counts = std::to_string(done) + "/" + std::to_string(total);
      const std::string timing = fixed(s.step_seconds(), 2) + " s/step  ETA " + format_duration(s.eta_seconds());
      const std::string skip = s.skipped_by_teacache() ? "  (TeaCache skip)" : "";
      if (mode_ == OutputMode::Bar) {
        const int filled = static_cast<int>(static_cast<uint64_t>(kBarWidth) * done / total);
        status_ = "denoise [" + std::string(filled, '#') + std::string(kBarWidth - filled, '.') + "] " +
                  counts + "  " + timing;
      } else {
        line("step " + counts + "  " + timing + skip);
      }
      break;
    }
    case v1::JobEvent::kPreview: {
      const auto& p = event.preview();
      if (mode_ == OutputMode::Lines) {
        line("preview at step " + std::to_string(p.step()) + ": " + std::to_string(p.width()) + "x" +
             std::to_string(p.height()) + " " + p.mime_type() + ", " + format_bytes(p.data().size()));
      }
      break;
    }
    case v1::JobEvent::kResult: {
      const auto& r = event.result();
      result_bytes_ += r.data().size();
      status_ = "receiving result: " + format_bytes(result_bytes_);
      if (r.last() && mode_ == OutputMode::Lines) line("result: " + format_bytes(r.total_bytes()));
      break;
    }
    case v1::JobEvent::kCompleted:
      status_.clear();
      line("job " + job + " completed in " + format_duration(event.completed().total_seconds()));
      break;
    case v1::JobEvent::kFailed:
      status_.clear();
      line("job " + job + " failed: " + std::string(status_code_name(event.failed().code())) +
           ": " + event.failed().message());
      break;
    case v1::JobEvent::kHeartbeat:
    case v1::JobEvent::EVENT_NOT_SET:
      break;
  }
  redraw();
}

}  // namespace stavid::client
