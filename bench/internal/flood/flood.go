// Package flood attacks a real vmagent the ways it was once brought down:
// connections that never finish their handshake, authenticated ones that
// never call, streams that send and wait, log followers that never read,
// half-sent messages, stalled header blocks and trickling deliveries. Each
// attack holds what it opened until Stop; the flood test and `make bench`
// run them against one agent process on loopback and read its memory,
// descriptors and children, checking a valid caller between them.
package flood

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Target is the agent under attack.
type Target struct {
	Addr string
	// ClientTLS is an authenticated caller's (hostctl's certificate).
	ClientTLS *tls.Config
}

// Held is what an attack holds open, and how its attempts ended.
type Held struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closers  []io.Closer
	outcomes map[string]int
	settled  int
}

func newHeld(ctx context.Context) (*Held, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	return &Held{cancel: cancel, outcomes: map[string]int{}}, ctx
}

func (h *Held) hold(c io.Closer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closers = append(h.closers, c)
}

// count records how one attempt stands once it has done its part (sent
// what it sends, or been turned away): each attempt counts once.
func (h *Held) count(outcome string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.outcomes[outcome]++
	h.settled++
}

// countErr counts err by its gRPC code, or as ok.
func (h *Held) countErr(err error, ok string) {
	if err == nil {
		h.count(ok)
		return
	}
	h.count(status.Code(err).String())
}

// Settled is how many attempts have done their part.
func (h *Held) Settled() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.settled
}

// Outcomes says how the attack's attempts have ended so far, by kind.
func (h *Held) Outcomes() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int, len(h.outcomes))
	for k, v := range h.outcomes {
		out[k] = v
	}
	return out
}

// Stop closes everything the attack opened and waits for its goroutines.
func (h *Held) Stop() {
	h.cancel()
	h.mu.Lock()
	cs := h.closers
	h.closers = nil
	h.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	h.wg.Wait()
}

// Attack is one way of flooding the agent, sized by N.
type Attack struct {
	Name string
	// Caller is who can mount it: "anyone" who reaches the port, or an
	// "authenticated" caller with a certificate of the agent's CA.
	Caller string
	Start  func(ctx context.Context, t Target, n int) (*Held, error)
	// Check, when set, is what the attack tries to deny, done while it
	// holds (a real delivery, for the trickles).
	Check func(ctx context.Context, a *Agent) error
}

// Attacks are the rows of the flood table, in its order.
var Attacks = []Attack{
	{"TCP connections that send nothing", "anyone", IdleTCP, nil},
	{"TLS ClientHellos, never finished", "anyone", UnfinishedHellos, nil},
	{"idle connections with no call", "authenticated", IdleAuthenticated, nil},
	{"delivery streams that send and wait (16 per connection)", "authenticated", SendingDeliveries, nil},
	{"SidecarLogs(PROXY_LOG, follow) never read", "authenticated", ProxyLogFollowers, nil},
	{"SidecarLogs(JOURNAL, follow)", "authenticated", JournalFollowers, nil},
	{"half-sent messages (16 per connection)", "authenticated", HalfSentMessages, nil},
	{"stalled HTTP/2 header blocks", "authenticated", StalledHeaders, nil},
	{"deliveries trickling a byte a second", "authenticated", Trickles, func(ctx context.Context, a *Agent) error { return Deliver(ctx, a.Legit) }},
}

func dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return d.DialContext(ctx, "tcp", addr)
}

// eachConnection opens n connections with open and holds each one; open
// says how its attempt stands.
func eachConnection(ctx context.Context, n int, open func(context.Context) (io.Closer, string)) *Held {
	h, ctx := newHeld(ctx)
	for range n {
		c, outcome := open(ctx)
		if c != nil {
			h.hold(c)
		}
		h.count(outcome)
	}
	return h
}

// IdleTCP opens n TCP connections and sends nothing.
func IdleTCP(ctx context.Context, t Target, n int) (*Held, error) {
	return eachConnection(ctx, n, func(ctx context.Context) (io.Closer, string) {
		c, err := dialTCP(ctx, t.Addr)
		if err != nil {
			return nil, "dial failed"
		}
		return c, "connected"
	}), nil
}

// clientHello is the first flight of a TLS handshake as Go's client sends
// it, captured once.
func clientHello(cfg *tls.Config) ([]byte, error) {
	c := &captureConn{done: make(chan struct{})}
	go tls.Client(c, cfg).Handshake()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		return nil, errors.New("no ClientHello written")
	}
	return c.buf.Bytes(), nil
}

// captureConn keeps the first write and then blocks reads until closed.
type captureConn struct {
	net.Conn
	buf  bytes.Buffer
	once sync.Once
	done chan struct{}
}

func (c *captureConn) Write(p []byte) (int, error) {
	c.once.Do(func() { c.buf.Write(p); close(c.done) })
	return len(p), nil
}
func (c *captureConn) Read([]byte) (int, error)         { <-make(chan struct{}); return 0, io.EOF }
func (c *captureConn) Close() error                     { return nil }
func (c *captureConn) SetDeadline(time.Time) error      { return nil }
func (c *captureConn) SetReadDeadline(time.Time) error  { return nil }
func (c *captureConn) SetWriteDeadline(time.Time) error { return nil }

// UnfinishedHellos opens n connections, sends a ClientHello on each and
// never answers the server.
func UnfinishedHellos(ctx context.Context, t Target, n int) (*Held, error) {
	hello, err := clientHello(&tls.Config{ServerName: "localhost", InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	return eachConnection(ctx, n, func(ctx context.Context) (io.Closer, string) {
		c, err := dialTCP(ctx, t.Addr)
		if err != nil {
			return nil, "dial failed"
		}
		if _, err := c.Write(hello); err != nil {
			c.Close()
			return nil, "write failed"
		}
		return c, "hello sent"
	}), nil
}

// IdleAuthenticated opens n connections that finish TLS with the client
// certificate and HTTP/2's preface, then make no call.
func IdleAuthenticated(ctx context.Context, t Target, n int) (*Held, error) {
	return eachConnection(ctx, n, func(ctx context.Context) (io.Closer, string) {
		c, err := dialH2(ctx, t)
		if err != nil {
			return nil, "handshake failed"
		}
		return c, "authenticated"
	}), nil
}

// grpcConns dials m gRPC connections as hostctl would, with its large
// windows so that a stream can send all the agent allows.
func grpcConns(h *Held, t Target, m int) ([]agentv1.AgentServiceClient, error) {
	apis := make([]agentv1.AgentServiceClient, m)
	for i := range apis {
		conn, err := grpc.NewClient(t.Addr, grpc.WithTransportCredentials(credentials.NewTLS(t.ClientTLS)),
			grpc.WithInitialWindowSize(4<<20), grpc.WithInitialConnWindowSize(4<<20))
		if err != nil {
			return nil, err
		}
		h.hold(conn)
		apis[i] = agentv1.NewAgentServiceClient(conn)
	}
	return apis, nil
}

// perConnection is how many streams one connection carries in the
// stream attacks, as measured before the limits.
const perConnection = 16

// SendingDeliveries opens n PutFile streams, 16 per connection, each of
// which sends a header and as many 1 MiB chunks as flow control lets
// through, then waits.
func SendingDeliveries(ctx context.Context, t Target, n int) (*Held, error) {
	h, ctx := newHeld(ctx)
	apis, err := grpcConns(h, t, (n+perConnection-1)/perConnection)
	if err != nil {
		return nil, err
	}
	chunk := bytes.Repeat([]byte{'x'}, 1<<20)
	for i := range n {
		h.wg.Go(func() {
			stream, err := apis[i/perConnection].PutFile(ctx)
			if err != nil {
				h.countErr(err, "")
				return
			}
			err = stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: &agentv1.FileHeader{
				Path: "/usr/local/bin/envoy", Size: 64 << 20, Sha256: strings.Repeat("ab", 32)}}})
			// Sends block while the agent's window is full: as much as it takes.
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				for j := 0; err == nil && j < 8; j++ {
					err = stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: chunk}})
				}
			}()
			select {
			case <-sent:
				if err != nil {
					h.countErr(stream.RecvMsg(&agentv1.PutFileResponse{}), "")
					return
				}
				h.count("8 MiB sent, waiting")
			case <-time.After(2 * time.Second):
				h.count("sending, window full")
			}
			// Then wait for the agent's verdict, sending nothing more.
			stream.RecvMsg(&agentv1.PutFileResponse{})
		})
	}
	return h, nil
}

// followers opens n SidecarLogs(follow) streams of src, 16 per connection,
// and never reads them: the agent's sends back up.
func followers(src agentv1.LogSource) func(context.Context, Target, int) (*Held, error) {
	return func(ctx context.Context, t Target, n int) (*Held, error) {
		h, ctx := newHeld(ctx)
		apis, err := grpcConns(h, t, (n+perConnection-1)/perConnection)
		if err != nil {
			return nil, err
		}
		for i := range n {
			h.wg.Go(func() {
				stream, err := apis[i/perConnection].SidecarLogs(ctx, &agentv1.SidecarLogsRequest{Source: src, Follow: true, TailLines: 1 << 30})
				if err != nil {
					h.countErr(err, "")
					return
				}
				// One receive says whether the agent took the stream (a refusal
				// comes at once); after it, nothing more is read.
				first := make(chan error, 1)
				go func() { first <- stream.RecvMsg(&agentv1.SidecarLogsResponse{}) }()
				select {
				case err := <-first:
					if err != nil {
						h.countErr(err, "")
						return
					}
				case <-time.After(500 * time.Millisecond):
				}
				h.count("streaming")
				<-ctx.Done()
			})
		}
		return h, nil
	}
}

var (
	// ProxyLogFollowers follows istio.log without reading.
	ProxyLogFollowers = followers(agentv1.LogSource_LOG_SOURCE_PROXY_LOG)
	// JournalFollowers follows the journal: each such stream runs a journalctl.
	JournalFollowers = followers(agentv1.LogSource_LOG_SOURCE_JOURNAL)
)

// HalfSentMessages opens n GetVersion calls, 16 per connection, over raw
// HTTP/2, each declaring a 2 MiB request message and sending only as much
// of it as the agent's flow control allows, up to 1 MiB.
func HalfSentMessages(ctx context.Context, t Target, n int) (*Held, error) {
	h, ctx := newHeld(ctx)
	for c := 0; c*perConnection < n; c++ {
		hc, err := dialH2(ctx, t)
		if err != nil {
			h.count("handshake failed")
			continue
		}
		h.hold(hc)
		// Streams open in increasing order (HTTP/2 says so), then send at once.
		var ids []uint32
		for s := 0; s < perConnection && c*perConnection+s < n; s++ {
			id := uint32(2*s + 1)
			if err := hc.request(id, agentv1.AgentService_GetVersion_FullMethodName, false); err != nil {
				h.count("headers failed")
				continue
			}
			ids = append(ids, id)
		}
		for _, id := range ids {
			h.wg.Go(func() {
				prefix := []byte{0, 0, 0x1f, 0xff, 0xff} // a message of 2 MiB - 1
				sent, err := hc.send(ctx, id, append(prefix, make([]byte, 1<<20-len(prefix))...))
				switch {
				case err != nil && sent == 0:
					h.count("refused")
				case err != nil:
					h.count("cut short")
				default:
					h.count("1 MiB held")
				}
			})
		}
	}
	return h, nil
}

// StalledHeaders opens n connections that each begin a request's header
// block and send 4 MiB of it in CONTINUATION frames without ever ending it.
func StalledHeaders(ctx context.Context, t Target, n int) (*Held, error) {
	return eachConnection(ctx, n, func(ctx context.Context) (io.Closer, string) {
		hc, err := dialH2(ctx, t)
		if err != nil {
			return nil, "handshake failed"
		}
		if err := hc.stalledHeaders(4 << 20); err != nil {
			return hc, "cut short"
		}
		return hc, "header block open"
	}), nil
}

// trickled are the paths the trickles deliver to, one each: two
// deliveries of one path would wait on each other instead of holding two
// slots. Deliver uses another.
var trickled = []string{"/usr/local/bin/pilot-agent", "/usr/local/bin/envoy", "/usr/local/bin/istio-start.sh",
	"/var/lib/istio/envoy/envoy_bootstrap_tmpl.json", "/var/lib/istio/envoy/sidecar.env", "/var/lib/istio/envoy/cluster.env"}

// Trickles opens n deliveries (at most 6) that send their header and then
// one byte a second, the way that once held every delivery slot.
func Trickles(ctx context.Context, t Target, n int) (*Held, error) {
	h, ctx := newHeld(ctx)
	apis, err := grpcConns(h, t, 1)
	if err != nil {
		return nil, err
	}
	for i := range min(n, len(trickled)) {
		h.wg.Go(func() {
			stream, err := apis[0].PutFile(ctx)
			if err == nil {
				err = stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: &agentv1.FileHeader{
					Path: trickled[i], Size: 1 << 20, Sha256: strings.Repeat("ab", 32)}}})
			}
			done := make(chan error, 1)
			if err == nil {
				go func() { done <- stream.RecvMsg(&agentv1.PutFileResponse{}) }()
				select {
				case err = <-done: // refused at once
				case <-time.After(500 * time.Millisecond):
				}
			}
			h.countErr(err, "trickling")
			if err != nil {
				return
			}
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-done:
					return
				case <-ctx.Done():
					return
				case <-tick.C:
					if stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: []byte{'x'}}}) != nil {
						return
					}
				}
			}
		})
	}
	return h, nil
}

// String lists outcomes in a stable order.
func String(outcomes map[string]int) string {
	var keys []string
	for k := range outcomes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, outcomes[k])
	}
	return b.String()
}
