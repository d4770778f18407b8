// Package agentclient is how hostctl talks to vmagent: one mutually
// authenticated gRPC connection per VM, errors mapped back to agenterr
// classes, and file delivery that skips files already in place.
package agentclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/filecodec"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

const flowWindow = 4 << 20

// ChunkSize is the content one file data message carries; well under
// gRPC's 4 MiB limit.
const ChunkSize = filecodec.ChunkSize

// Client is a connection to one agent.
type Client struct {
	addr string
	conn *grpc.ClientConn
	api  agentv1.AgentServiceClient

	mu sync.Mutex
	// zstd says the agent takes zstd frames; asked once, at the first
	// compressed delivery.
	zstd *bool
	// drain is the plain throughput (bytes/s) the first probe measured; 0
	// until one has.
	drain float64
}

// Dial connects to the agent at addr (host:port) with tlsCfg, which must carry
// the client certificate and pin the agent CA. The connection is lazy: the
// first call reports an unreachable agent.
func Dial(addr string, tlsCfg *tls.Config) (*Client, error) {
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		// Large windows keep 100+ MB binaries streaming at disk speed.
		grpc.WithInitialWindowSize(flowWindow),
		grpc.WithInitialConnWindowSize(flowWindow),
		// When the sidecar starts, its capture rules can cut this connection
		// mid-stream (conntrack picks it up as new and redirects the replies):
		// pings notice within seconds, and the channel reconnects.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
	)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", addr, err)
	}
	return &Client{addr: addr, conn: conn, api: agentv1.NewAgentServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// API exposes the raw service for calls this package does not wrap.
func (c *Client) API() agentv1.AgentServiceClient { return c.api }

// wrap maps a gRPC error back to its agenterr class and names the agent.
func (c *Client) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	err = agenterr.FromGRPC(err)
	if errors.Is(err, agenterr.Unavailable) {
		return fmt.Errorf("agent at %s unreachable (%s): %w", c.addr, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Version returns the agent's version and capabilities.
func (c *Client) Version(ctx context.Context) (*agentv1.GetVersionResponse, error) {
	r, err := c.api.GetVersion(ctx, &agentv1.GetVersionRequest{})
	return r, c.wrap("version", err)
}

// Status returns the agent's view of the VM.
func (c *Client) Status(ctx context.Context) (*agentv1.GetStatusResponse, error) {
	r, err := c.api.GetStatus(ctx, &agentv1.GetStatusRequest{})
	return r, c.wrap("status", err)
}

// StepsError reports the failed steps of an Install or Uninstall.
type StepsError struct {
	Steps []*agentv1.StepResult
}

func (e *StepsError) Error() string {
	var failed []string
	for _, s := range e.Steps {
		if s.GetOutcome() == agentv1.StepOutcome_STEP_OUTCOME_FAILED {
			failed = append(failed, s.GetName()+": "+s.GetDetail())
		}
	}
	return "install step failed: " + strings.Join(failed, "; ")
}

func checkSteps(steps []*agentv1.StepResult) error {
	for _, s := range steps {
		if s.GetOutcome() == agentv1.StepOutcome_STEP_OUTCOME_FAILED {
			return &StepsError{Steps: steps}
		}
	}
	return nil
}

// Install runs the postinst; a failed step is returned as *StepsError along
// with every step's result.
func (c *Client) Install(ctx context.Context, req *agentv1.InstallRequest) ([]*agentv1.StepResult, error) {
	r, err := c.api.Install(ctx, req)
	if err != nil {
		return nil, c.wrap("install", err)
	}
	return r.GetSteps(), checkSteps(r.GetSteps())
}

// Uninstall reverts the postinst.
func (c *Client) Uninstall(ctx context.Context, dryRun bool) ([]*agentv1.StepResult, error) {
	r, err := c.api.Uninstall(ctx, &agentv1.UninstallRequest{DryRun: dryRun})
	if err != nil {
		return nil, c.wrap("uninstall", err)
	}
	return r.GetSteps(), checkSteps(r.GetSteps())
}

// File is a local file to deliver.
type File struct {
	// Path on the VM (allowlisted by the agent).
	Path string
	// Mode, Owner and Group; zero values take the agent's policy defaults.
	Mode         uint32
	Owner, Group string
	// Open returns the content; it is called at most twice (hash, send).
	Open func() (io.ReadCloser, error)
	// SHA256 and Size, when SHA256 is set, are trusted instead of reading
	// the content once more (hostctl caches binaries by digest).
	SHA256 string
	Size   int64
	// Form, when set, opens the content's compressed form (filecodec), sent
	// instead of the content to an agent that takes it over a link slower
	// than it decodes.
	Form func() (io.ReadCloser, error)
}

// LocalFile delivers the file at local to path.
func LocalFile(path, local string) File {
	return File{Path: path, Open: func() (io.ReadCloser, error) { return os.Open(local) }}
}

// BytesFile delivers data to path.
func BytesFile(path string, data []byte) File {
	return File{Path: path, Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }}
}

// PutResult says what happened to one file.
type PutResult struct {
	Path string
	// Sent is false when the agent already had the content.
	Sent bool
	// Bytes of file data sent: less than the size when compressed.
	Bytes int64
	// Compressed is true when some of it went as zstd frames.
	Compressed bool
}

// PutFile delivers f unless the agent already has the same content, in
// which case only owner and mode are converged and no data is sent.
func (c *Client) PutFile(ctx context.Context, f File) (PutResult, error) {
	sum, size, err := digest(f)
	if err != nil {
		return PutResult{}, err
	}
	st, err := c.api.StatFiles(ctx, &agentv1.StatFilesRequest{Paths: []string{f.Path}})
	if err != nil {
		return PutResult{}, c.wrap("stat "+f.Path, err)
	}
	hdr := &agentv1.FileHeader{Path: f.Path, Size: uint64(size), Sha256: sum, Mode: f.Mode, Owner: f.Owner, Group: f.Group}
	same := len(st.GetFiles()) == 1 && st.GetFiles()[0].GetSha256() == sum
	stream, err := c.api.PutFile(ctx)
	if err != nil {
		return PutResult{}, c.wrap("put "+f.Path, err)
	}
	if err := stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: hdr}}); err != nil && err != io.EOF {
		return PutResult{}, c.wrap("put "+f.Path, err)
	}
	out := &chunkSender{stream: stream}
	if !same {
		if err := c.sendContent(ctx, out, f, size); err != nil {
			return PutResult{}, c.wrap("put "+f.Path, err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return PutResult{}, c.wrap("put "+f.Path, err)
	}
	return PutResult{Path: f.Path, Sent: resp.GetOutcome() == agentv1.FileOutcome_FILE_OUTCOME_WRITTEN, Bytes: out.wire, Compressed: out.frames > 0}, nil
}

// sendContent sends f's content plainly, or from its compressed form when
// the agent takes it and the link is slower than plainAbove. The first
// large delivery over a connection measures that: it starts plain, and
// switches to the form at the next chunk if the link turns out slow.
func (c *Client) sendContent(ctx context.Context, s *chunkSender, f File, size int64) error {
	defer s.close()
	useForm := false
	if f.Form != nil {
		ok, err := c.takesZstd(ctx)
		if err != nil {
			return err
		}
		useForm = ok
	}
	drain := c.measured()
	switch {
	case !useForm || drain >= plainAbove:
		return s.plain(f, -1)
	case drain > 0 || size < 2*probeEnd:
		return s.form(f, 0)
	}
	if err := s.plain(f, probeEnd/ChunkSize); err != nil || s.done {
		return err
	}
	// The first probeStart bytes only fill the flow-control window; from
	// there each Send waits for the agent to take data, as fast as the
	// link or the agent allows.
	drain = float64(probeEnd-probeStart) / time.Since(s.probed).Seconds()
	c.mu.Lock()
	c.drain = drain
	c.mu.Unlock()
	if drain >= plainAbove {
		return s.plain(f, -1)
	}
	return s.form(f, probeEnd/ChunkSize)
}

// plainAbove is the throughput past which plain chunks beat frames: above
// it the agent's one core decoding zstd (about 300 MB/s of output on a
// small cloud core) would be slower than the link.
const plainAbove = 200e6

// The probe: bytes sent plain before the link is judged, and from where
// on they are timed (past the 4 MiB flow-control window).
const (
	probeStart = flowWindow
	probeEnd   = probeStart + 4<<20
)

func (c *Client) measured() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.drain
}

// takesZstd asks the agent once whether it announces filecodec.Capability;
// an agent from before it gets plain chunks.
func (c *Client) takesZstd(ctx context.Context) (bool, error) {
	c.mu.Lock()
	known := c.zstd
	c.mu.Unlock()
	if known != nil {
		return *known, nil
	}
	v, err := c.Version(ctx)
	if err != nil {
		return false, err
	}
	ok := slices.Contains(v.GetCapabilities(), filecodec.Capability)
	c.mu.Lock()
	c.zstd = &ok
	c.mu.Unlock()
	return ok, nil
}

// chunkSender sends one file's content and keeps count.
type chunkSender struct {
	stream grpc.ClientStreamingClient[agentv1.PutFileRequest, agentv1.PutFileResponse]
	// content and wire count bytes of content covered and of data sent;
	// frames the zstd frames among them.
	content, wire int64
	frames        int
	// probed is when the content sent first passed probeStart.
	probed time.Time
	// done is set when the content ended or the agent ended the stream
	// early (its status says why).
	done bool
	// plainOpen is the content opened by plain, read on from where it
	// stopped.
	plainOpen io.ReadCloser
}

func (s *chunkSender) close() {
	if s.plainOpen != nil {
		s.plainOpen.Close()
	}
}

func (s *chunkSender) send(msg *agentv1.PutFileRequest, content, wire int) error {
	if err := s.stream.Send(msg); err != nil {
		if err == io.EOF {
			s.done = true
			return nil
		}
		return err
	}
	if s.content < probeStart && s.content+int64(content) >= probeStart {
		s.probed = time.Now()
	}
	s.content += int64(content)
	s.wire += int64(wire)
	return nil
}

// plain sends up to chunks chunks of the content as it is (all when
// negative).
func (s *chunkSender) plain(f File, chunks int) error {
	if s.plainOpen == nil {
		r, err := f.Open()
		if err != nil {
			return fmt.Errorf("open %s: %w", f.Path, err)
		}
		s.plainOpen = r
	}
	buf := make([]byte, ChunkSize)
	for i := 0; chunks < 0 || i < chunks; i++ {
		n, rerr := io.ReadFull(s.plainOpen, buf)
		if n > 0 {
			if err := s.send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: buf[:n]}}, n, n); err != nil || s.done {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			s.done = true
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("read %s: %w", f.Path, rerr)
		}
	}
	return nil
}

// form sends the content from its compressed form, from record skip on.
func (s *chunkSender) form(f File, skip int) error {
	r, err := f.Form()
	if err != nil {
		return fmt.Errorf("open the compressed form of %s: %w", f.Path, err)
	}
	defer r.Close()
	fr := filecodec.NewFormReader(r)
	for range skip {
		if err := fr.Skip(); err != nil {
			return fmt.Errorf("the compressed form of %s: %w", f.Path, err)
		}
	}
	for {
		payload, frame, err := fr.Next()
		if err == io.EOF {
			s.done = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("the compressed form of %s: %w", f.Path, err)
		}
		msg := &agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: payload}}
		content := len(payload)
		if frame {
			msg.Msg = &agentv1.PutFileRequest_ZstdChunk{ZstdChunk: payload}
			content = ChunkSize // the last may be shorter; only the probe reads this
			s.frames++
		}
		if err := s.send(msg, content, len(payload)); err != nil || s.done {
			return err
		}
	}
}

func digest(f File) (string, int64, error) {
	if f.SHA256 != "" {
		return f.SHA256, f.Size, nil
	}
	r, err := f.Open()
	if err != nil {
		return "", 0, fmt.Errorf("open %s: %w", f.Path, err)
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", f.Path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Sidecar starts, stops or restarts the istio unit.
func (c *Client) Sidecar(ctx context.Context, action agentv1.SidecarAction) (*agentv1.SidecarState, error) {
	r, err := c.api.ControlSidecar(ctx, &agentv1.ControlSidecarRequest{Action: action})
	if err != nil {
		return nil, c.wrap("sidecar", err)
	}
	return r.GetSidecar(), nil
}
