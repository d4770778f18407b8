package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/config"
)

func testLimits() config.Limits {
	l := config.Default().Limits
	l.DeliveryIdleTimeout = config.Duration(time.Second)
	return l
}

// rawConn is a plain gRPC connection as hostctl's, for tests that need the
// connection itself.
func (e env) rawConn(t testing.TB) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(e.clientTLS(t))))
	must(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// 200 deliveries that send a header and a little data and then stall, over
// 20 real mTLS connections: beyond the cap they are refused at once with
// RESOURCE_EXHAUSTED, the ones let in are cancelled after the idle timeout
// with their temporary files removed, and the agent's heap stays bounded
// (it grew by over 800 MiB: every stream held a 4 MiB set of write buffers).
func TestStalledDeliveriesAreBoundedAndCancelled(t *testing.T) {
	e := startAgentWith(t, testLimits())
	paths := []string{"/usr/local/bin/envoy", "/usr/local/bin/pilot-agent", "/var/lib/istio/envoy/envoy_bootstrap_tmpl.json"}
	conns := make([]agentv1.AgentServiceClient, 20)
	for i := range conns {
		conns[i] = agentv1.NewAgentServiceClient(e.rawConn(t))
	}
	// Small enough for gRPC's 16 KiB buffer class: the heap is shared with
	// these 200 clients, whose sends would otherwise weigh 1 MiB each.
	chunk := bytes.Repeat([]byte("x"), 15000)

	// The live heap as of each collection (garbage not counted), sampled.
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	runtime.GC()
	metrics.Read(live)
	base := live[0].Value.Uint64()
	var peak atomic.Uint64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		for {
			metrics.Read(s)
			peak.Store(max(peak.Load(), s[0].Value.Uint64()))
			select {
			case <-stopSampling:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	const streams = 200
	codesSeen := make([]codes.Code, streams)
	msgs := make([]string, streams)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stream, err := conns[i%len(conns)].PutFile(ctx)
			if err == nil {
				p := paths[i%len(paths)]
				stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: &agentv1.FileHeader{Path: p, Size: 3 << 20, Sha256: strings.Repeat("ab", 32)}}})
				stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: chunk}})
				// Then nothing: wait for the agent's verdict.
				err = stream.RecvMsg(&agentv1.PutFileResponse{})
			}
			codesSeen[i], msgs[i] = status.Code(err), status.Convert(err).Message()
		})
	}
	wg.Wait()
	close(stopSampling)
	<-sampled

	count := map[codes.Code]int{}
	for i, c := range codesSeen {
		count[c]++
		switch c {
		case codes.ResourceExhausted:
			if !strings.Contains(msgs[i], "already receiving 4 files") {
				t.Errorf("refusal %q does not name the limit", msgs[i])
			}
		case codes.DeadlineExceeded:
			if !strings.Contains(msgs[i], "no data for 1s") {
				t.Errorf("cancellation %q does not say why", msgs[i])
			}
		case codes.Aborted: // two let in for the same path
		default:
			t.Errorf("stream %d: got %v %q, want it refused or cancelled by the agent", i, c, msgs[i])
		}
	}
	if count[codes.ResourceExhausted] < streams/2 || count[codes.DeadlineExceeded] == 0 {
		t.Errorf("got %v, want most refused (RESOURCE_EXHAUSTED) and the ones let in cancelled (DEADLINE_EXCEEDED)", count)
	}
	if grown := int64(peak.Load()) - int64(base); grown > 100<<20 {
		t.Errorf("live heap grew by %d MiB with %d stalled deliveries, want under 100 MiB", grown>>20, streams)
	}
	waitFor(t, "no temporary file left", func() bool { return len(temps(t, e.dir)) == 0 })
	t.Logf("outcomes %v; live heap peak +%d MiB", count, (int64(peak.Load())-int64(base))>>20)
}

// A message larger than a chunk needs is refused by gRPC before it is
// buffered (the default would take 4 MiB).
func TestOversizedMessageIsRefused(t *testing.T) {
	e := startAgent(t)
	stream, err := agentv1.NewAgentServiceClient(e.rawConn(t)).PutFile(ctxT(t))
	must(t, err)
	big := make([]byte, 3<<20)
	must(t, stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: &agentv1.FileHeader{Path: "/usr/local/bin/envoy", Size: uint64(len(big)), Sha256: sum(big)}}}))
	stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: big}})
	_, err = stream.CloseAndRecv()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("got %v, want RESOURCE_EXHAUSTED for a 3 MiB message", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "usr/local/bin/envoy")); !os.IsNotExist(err) {
		t.Errorf("got %v, want no envoy written", err)
	}
}

// A connection with no call for connection_idle_timeout is closed by the agent.
func TestIdleConnectionIsClosed(t *testing.T) {
	l := config.Default().Limits
	l.ConnectionIdleTimeout = config.Duration(time.Second)
	e := startAgentWith(t, l)
	conn := e.rawConn(t)
	if _, err := agentv1.NewAgentServiceClient(conn).GetVersion(ctxT(t), &agentv1.GetVersionRequest{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !conn.WaitForStateChange(ctx, connectivity.Ready) {
		t.Fatalf("connection still %v after 10 s idle, want the agent to have closed it", conn.GetState())
	}
	if st := conn.GetState(); st != connectivity.Idle {
		t.Errorf("got %v, want Idle (closed by the agent's GOAWAY)", st)
	}
}

// stalledDelivery opens a delivery on conn that sends its header and then
// nothing: it holds a call running on that connection.
func stalledDelivery(t *testing.T, conn *grpc.ClientConn, path string) {
	t.Helper()
	stream, err := agentv1.NewAgentServiceClient(conn).PutFile(ctxT(t))
	must(t, err)
	must(t, stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: &agentv1.FileHeader{Path: path, Size: 1 << 20, Sha256: strings.Repeat("ab", 32)}}}))
}

// With every authenticated connection running a call, one more connection
// is refused at accept (the calls in progress keep their connections);
// once a call ends, its idle connection makes room for a new one.
func TestConnectionsBeyondTheCapWithCallsRunning(t *testing.T) {
	l := testLimits()
	l.MaxConnections = 2
	l.DeliveryIdleTimeout = config.Duration(3 * time.Second)
	e := startAgentWith(t, l)
	busy := []*grpc.ClientConn{e.rawConn(t), e.rawConn(t)}
	stalledDelivery(t, busy[0], "/usr/local/bin/envoy")
	stalledDelivery(t, busy[1], "/usr/local/bin/pilot-agent")
	waitFor(t, "both deliveries running", func() bool { return e.agent.Guard.Counts().Streams == 2 })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := agentv1.NewAgentServiceClient(e.rawConn(t)).GetVersion(ctx, &agentv1.GetVersionRequest{}, grpc.WaitForReady(false))
	if err == nil {
		t.Fatal("a third connection was served while two calls held both slots, want it refused at accept")
	}
	if c := e.agent.Guard.Counts(); c.Connections != 2 {
		t.Errorf("got %d authenticated connections, want the 2 with calls running", c.Connections)
	}
	// The deliveries are cancelled after 3 s without data; their connections
	// are then idle, and a new caller gets in.
	waitFor(t, "a new caller served", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := agentv1.NewAgentServiceClient(e.rawConn(t)).GetVersion(ctx, &agentv1.GetVersionRequest{})
		return err == nil
	})
}

// An authenticated connection that makes no call is closed after
// first_call_timeout; one that made a call stays.
func TestConnectionWithoutACallIsClosed(t *testing.T) {
	l := testLimits()
	l.FirstCallTimeout = config.Duration(time.Second)
	e := startAgentWith(t, l)
	used := e.rawConn(t)
	if _, err := agentv1.NewAgentServiceClient(used).GetVersion(ctxT(t), &agentv1.GetVersionRequest{}); err != nil {
		t.Fatal(err)
	}
	cfg := e.clientTLS(t).Clone()
	cfg.NextProtos = []string{"h2"}
	raw, err := tls.Dial("tcp", e.addr, cfg)
	must(t, err)
	defer raw.Close()
	_, err = raw.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
	must(t, err)
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, raw) // until the agent closes it
	if err != nil {
		t.Fatalf("got %v, want the agent to close a connection that made no call", err)
	}
	if st := used.GetState(); st != connectivity.Ready && st != connectivity.Idle {
		t.Errorf("the connection that made a call: %v", st)
	}
	if _, err := agentv1.NewAgentServiceClient(used).GetVersion(ctxT(t), &agentv1.GetVersionRequest{}); err != nil {
		t.Errorf("the connection that made a call: %v", err)
	}
}
