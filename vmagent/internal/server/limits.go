package server

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/config"
)

// The limits (config.Limits) bound what an authenticated caller can make
// the agent hold: a delivery costs about 10 MiB while it streams (its
// flow-control window, the message being decoded, the write's buffers),
// and at most 3 MiB more when it carries zstd frames (two decode buffers of
// a chunk each, the decoder's state), so
// max_deliveries of them stay well inside the unit's MemoryMax (256M) and
// near its GOMEMLIMIT (64MiB); streams_per_connection caps HTTP/2's
// concurrent streams (more wait in the client).

// maxMessage bounds one received message: a file chunk is 1 MiB
// (agentclient.ChunkSize), every other request is far smaller.
const maxMessage = 2 << 20

// deliveryLimiter refuses PutFile streams beyond MaxDeliveries at once and
// cancels one that stalls.
type deliveryLimiter struct {
	slots chan struct{}
	idle  time.Duration
}

func newDeliveryLimiter(l config.Limits) *deliveryLimiter {
	return &deliveryLimiter{slots: make(chan struct{}, l.MaxDeliveries), idle: time.Duration(l.DeliveryIdleTimeout)}
}

func (d *deliveryLimiter) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod != agentv1.AgentService_PutFile_FullMethodName {
		return handler(srv, ss)
	}
	select {
	case d.slots <- struct{}{}:
		defer func() { <-d.slots }()
	default:
		// Refused at once: a waiting stream would hold its window of data.
		return status.Errorf(codes.ResourceExhausted, "the agent is already receiving %d files, its limit: retry when one has finished", cap(d.slots))
	}
	return handler(srv, &idleStream{ServerStream: ss, idle: d.idle})
}

// idleStream fails a RecvMsg that waits longer than idle; the handler then
// returns, which ends the stream (the caller sees DEADLINE_EXCEEDED) and
// the write removes its temporary file.
type idleStream struct {
	grpc.ServerStream
	idle time.Duration
}

func (s *idleStream) RecvMsg(m any) error {
	done := make(chan error, 1)
	// The receive outlives a timeout only until the stream ends, which
	// returning from the handler does.
	go func() { done <- s.ServerStream.RecvMsg(m) }()
	timer := time.NewTimer(s.idle)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return status.Errorf(codes.DeadlineExceeded, "no data for %s: the delivery was cancelled and its partial file removed; send it again", s.idle)
	}
}
