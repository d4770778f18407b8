package flood

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Conn is an authenticated HTTP/2 connection driven frame by frame, for
// requests no gRPC client would send: a message cut short, a header block
// never ended. It keeps to the agent's flow control so that what it sends
// is what the agent must buffer, not a protocol error.
type h2Conn struct {
	tc *tls.Conn
	fr *http2.Framer

	wmu sync.Mutex // the framer's writes

	mu            sync.Mutex
	changed       chan struct{} // closed and replaced when a window or state changes
	connWindow    int64
	initialWindow int64
	windows       map[uint32]int64
	ended         map[uint32]bool
	err           error
}

// dialH2 finishes TLS with the client certificate and HTTP/2's preface.
func dialH2(ctx context.Context, t Target) (*h2Conn, error) {
	cfg := t.ClientTLS.Clone()
	cfg.NextProtos = []string{"h2"}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	raw, err := d.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, err
	}
	tc := raw.(*tls.Conn)
	if _, err := tc.Write([]byte(http2.ClientPreface)); err != nil {
		tc.Close()
		return nil, err
	}
	c := &h2Conn{tc: tc, fr: http2.NewFramer(tc, tc), changed: make(chan struct{}),
		connWindow: 65535, initialWindow: 65535, windows: map[uint32]int64{}, ended: map[uint32]bool{}}
	if err := c.write(func() error { return c.fr.WriteSettings() }); err != nil {
		tc.Close()
		return nil, err
	}
	go c.readLoop()
	return c, nil
}

func (c *h2Conn) Close() error { return c.tc.Close() }

func (c *h2Conn) write(f func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return f()
}

// update changes the connection's state under its lock and wakes waiters.
func (c *h2Conn) update(f func()) {
	c.mu.Lock()
	f()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

func (c *h2Conn) readLoop() {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.update(func() { c.err = err })
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			f.ForeachSetting(func(s http2.Setting) error {
				if s.ID == http2.SettingInitialWindowSize {
					c.update(func() {
						delta := int64(s.Val) - c.initialWindow
						c.initialWindow = int64(s.Val)
						for id := range c.windows {
							c.windows[id] += delta
						}
					})
				}
				return nil
			})
			c.write(func() error { return c.fr.WriteSettingsAck() })
		case *http2.WindowUpdateFrame:
			c.update(func() {
				if f.StreamID == 0 {
					c.connWindow += int64(f.Increment)
				} else {
					c.windows[f.StreamID] += int64(f.Increment)
				}
			})
		case *http2.PingFrame:
			if !f.IsAck() {
				c.write(func() error { return c.fr.WritePing(true, f.Data) })
			}
		case *http2.RSTStreamFrame:
			c.update(func() { c.ended[f.StreamID] = true })
		case *http2.HeadersFrame:
			if f.StreamEnded() { // a trailers-only answer: refused
				c.update(func() { c.ended[f.StreamID] = true })
			}
		case *http2.GoAwayFrame:
			c.update(func() { c.err = errors.New("GOAWAY " + f.ErrCode.String()) })
		}
	}
}

// requestHeaders is a gRPC request's header block for method.
func requestHeaders(method string, pad int) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":path", method}, {":authority", "localhost"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if pad > 0 {
		enc.WriteField(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("a", pad)})
	}
	return buf.Bytes()
}

// request opens stream id with a call to method.
func (c *h2Conn) request(id uint32, method string, endStream bool) error {
	c.mu.Lock()
	c.windows[id] = c.initialWindow
	c.mu.Unlock()
	return c.write(func() error {
		return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: requestHeaders(method, 0), EndHeaders: true, EndStream: endStream})
	})
}

// send writes data on stream id as the windows allow, never ending the
// stream; it returns what was sent when all is, or when the stream or the
// connection ends or ctx does.
func (c *h2Conn) send(ctx context.Context, id uint32, data []byte) (int, error) {
	sent := 0
	for sent < len(data) {
		c.mu.Lock()
		n := min(int64(len(data)-sent), 16384, c.connWindow, c.windows[id])
		ended, err, changed := c.ended[id], c.err, c.changed
		if n > 0 && !ended && err == nil {
			c.connWindow -= n
			c.windows[id] -= n
		}
		c.mu.Unlock()
		switch {
		case ended:
			return sent, errors.New("stream ended by the agent")
		case err != nil:
			return sent, err
		case n == 0:
			select {
			case <-changed:
			case <-ctx.Done():
				return sent, ctx.Err()
			}
			continue
		}
		chunk := data[sent : sent+int(n)]
		if err := c.write(func() error { return c.fr.WriteData(id, false, chunk) }); err != nil {
			return sent, err
		}
		sent += int(n)
	}
	return sent, nil
}

// stalledHeaders begins a request whose header block carries size bytes
// of one header in CONTINUATION frames, and never ends it.
func (c *h2Conn) stalledHeaders(size int) error {
	block := requestHeaders("/meshvm.agent.v1.AgentService/GetVersion", size)
	block = block[:len(block)-1] // the block's end is never sent
	const frame = 16384
	return c.write(func() error {
		first := min(frame, len(block))
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:first]}); err != nil {
			return err
		}
		for rest := block[first:]; len(rest) > 0; {
			n := min(frame, len(rest))
			c.tc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := c.fr.WriteContinuation(1, false, rest[:n]); err != nil {
				return err
			}
			rest = rest[n:]
		}
		return nil
	})
}
