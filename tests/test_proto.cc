// The generated API: messages round-trip through the wire format, and the service exposes the
// methods the protocol promises (streaming where it says so).
#include <gtest/gtest.h>

#include "stavid/v1/video.grpc.pb.h"

namespace {

TEST(Proto, GenerateRequestRoundTrips) {
  stavid::v1::GenerateRequest r;
  r.set_model("hunyuan-video");
  r.set_prompt("a red circle moves left");
  r.set_frames(129);
  r.set_height(720);
  r.set_width(1280);
  r.set_seed(42);
  r.mutable_sta()->set_kind(stavid::v1::StaMode::KIND_FIXED);
  r.mutable_sta()->set_window_t(3);
  r.mutable_output()->set_crf(18);
  std::string wire;
  ASSERT_TRUE(r.SerializeToString(&wire));
  stavid::v1::GenerateRequest back;
  ASSERT_TRUE(back.ParseFromString(wire));
  EXPECT_EQ(back.prompt(), "a red circle moves left");
  EXPECT_EQ(back.frames(), 129u);
  EXPECT_EQ(back.sta().kind(), stavid::v1::StaMode::KIND_FIXED);
  EXPECT_TRUE(back.output().has_crf());
  EXPECT_FALSE(stavid::v1::GenerateRequest().output().has_crf());  // unset is distinguishable from 0
}

TEST(Proto, ServiceMethods) {
  const auto* svc = stavid::v1::GenerateRequest::descriptor()->file()->FindServiceByName("VideoService");
  ASSERT_NE(svc, nullptr);
  EXPECT_EQ(svc->method_count(), 7);
  EXPECT_TRUE(svc->FindMethodByName("Generate")->server_streaming());
  EXPECT_TRUE(svc->FindMethodByName("WatchJob")->server_streaming());
  EXPECT_FALSE(svc->FindMethodByName("SubmitJob")->server_streaming());
  EXPECT_EQ(stavid::v1::JobEvent::descriptor()->FindOneofByName("event")->field_count(), 9);
}

}  // namespace
