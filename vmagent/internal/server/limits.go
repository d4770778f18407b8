package server

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/config"
)

// What the limits (config.Limits) cost, summed over all callers: a stream
// buffers at most flowWindow plus the message being read (maxMessage), so
// max_streams (32) of them 96 MiB; a delivery holds about 4 MiB more while
// it writes (the write's buffers, and with zstd frames two decode buffers
// of a chunk and the decoder's state), 16 MiB for max_deliveries (4); an
// authenticated connection about 100 KiB (gRPC's read and write buffers,
// TLS), 6.4 MiB for max_connections (64); a handshake about 40 KiB, 1.3 MiB
// for max_handshakes (32); programs run (journalctl, iptables-save) a few
// MiB each, at most max_log_streams + max_process_calls (6) of them. About
// 150 MiB with the agent's own 15: inside the unit's MemoryMax (256M).

// maxMessage bounds one received message: a file chunk is 1 MiB
// (agentclient.ChunkSize), every other request is far smaller.
const maxMessage = 2 << 20

// deliveryProgress is the new data a delivery must send within
// delivery_idle_timeout: an empty chunk or a byte now and then is no
// progress, so a trickle cannot hold one of the few delivery slots.
const deliveryProgress = 64 << 10

// deliveryLimiter cancels a PutFile stream that stops making progress; the
// tap (Guard) already bounds how many run at once.
type deliveryLimiter struct {
	idle time.Duration
}

func newDeliveryLimiter(l config.Limits) *deliveryLimiter {
	return &deliveryLimiter{idle: time.Duration(l.DeliveryIdleTimeout)}
}

func (d *deliveryLimiter) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod != agentv1.AgentService_PutFile_FullMethodName {
		return handler(srv, ss)
	}
	s := &progressStream{ServerStream: ss, idle: d.idle, deadline: time.Now().Add(d.idle)}
	return handler(srv, s)
}

// progressStream fails a RecvMsg once the delivery has gone idle long
// without deliveryProgress bytes of new data; the handler then returns,
// which ends the stream (the caller sees DEADLINE_EXCEEDED) and the write
// removes its temporary file. The header and the stream's end count as
// progress.
type progressStream struct {
	grpc.ServerStream
	idle     time.Duration
	deadline time.Time // when the current window of progress runs out
	pending  int       // bytes received in the current window
}

func (s *progressStream) RecvMsg(m any) error {
	done := make(chan error, 1)
	// The receive outlives a timeout only until the stream ends, which
	// returning from the handler does.
	go func() { done <- s.ServerStream.RecvMsg(m) }()
	timer := time.NewTimer(time.Until(s.deadline))
	defer timer.Stop()
	select {
	case err := <-done:
		if err == nil {
			s.progress(m)
		}
		return err
	case <-timer.C:
		return status.Errorf(codes.DeadlineExceeded, "no data for %s (at least 64 KiB each %s): the delivery was cancelled and its partial file removed; send it again", s.idle, s.idle)
	}
}

func (s *progressStream) progress(m any) {
	req, ok := m.(*agentv1.PutFileRequest)
	if !ok {
		return
	}
	switch msg := req.GetMsg().(type) {
	case *agentv1.PutFileRequest_Header:
		s.pending = deliveryProgress
	case *agentv1.PutFileRequest_Chunk:
		s.pending += len(msg.Chunk)
	case *agentv1.PutFileRequest_ZstdChunk:
		s.pending += len(msg.ZstdChunk)
	}
	if s.pending >= deliveryProgress {
		s.pending = 0
		s.deadline = time.Now().Add(s.idle)
	}
}
