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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/agentspec"
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
	// version is the agent's answer to GetVersion, asked once (see Version).
	version *agentv1.GetVersionResponse
	// framed is what the first probe found faster (see sendContent).
	framed probed
}

// Dial connects to the agent at addr (host:port) with tlsCfg, which must carry
// the client certificate and pin the agent CA. The connection is lazy: the
// first call reports an unreachable agent.
func Dial(addr string, tlsCfg *tls.Config) (*Client, error) {
	// Large windows keep 100+ MB binaries streaming at disk speed.
	return dial(addr, tlsCfg, grpc.WithInitialWindowSize(flowWindow), grpc.WithInitialConnWindowSize(flowWindow))
}

// DialWatch connects for a long-lived stream of small messages (a
// controller's Watch of each of its agents): without gRPC's 32 KiB read
// buffer per connection (TLS buffers each record already), 32 MiB of a
// controller's heap at a thousand agents. (gRPC hands its write buffer
// back after each flush already.)
func DialWatch(addr string, tlsCfg *tls.Config) (*Client, error) {
	return dial(addr, tlsCfg, grpc.WithReadBufferSize(0))
}

func dial(addr string, tlsCfg *tls.Config, opts ...grpc.DialOption) (*Client, error) {
	conn, err := grpc.NewClient(addr, append(opts,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		// When the sidecar starts, its capture rules can cut this connection
		// mid-stream (conntrack picks it up as new and redirects the replies):
		// pings notice within seconds, and the channel reconnects.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: agentspec.KeepaliveTime, Timeout: agentspec.KeepaliveTimeout, PermitWithoutStream: true}),
	)...)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", addr, err)
	}
	return &Client{addr: addr, conn: conn, api: agentv1.NewAgentServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

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

// Version returns the agent's version and capabilities. The agent is asked
// until it answers once, then never again on this connection: waiting for
// the agent, reporting its version and choosing how to send files take one
// GetVersion between them. A client is made for each session, and after
// installing a new agent (a new pass of the per-VM core dials anew).
func (c *Client) Version(ctx context.Context) (*agentv1.GetVersionResponse, error) {
	c.mu.Lock()
	v := c.version
	c.mu.Unlock()
	if v != nil {
		return v, nil
	}
	r, err := c.api.GetVersion(ctx, &agentv1.GetVersionRequest{})
	if err != nil {
		return nil, c.wrap("version", err)
	}
	c.mu.Lock()
	c.version = r
	c.mu.Unlock()
	return r, nil
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
	// Equivalent are digests of other contents that mean the same (a file
	// another program rewrites in its own form): one held on the VM is left
	// as it is, owner and mode included.
	Equivalent []string
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
	res, err := c.PutFiles(ctx, []File{f})
	if len(res) == 0 {
		return PutResult{}, err
	}
	return res[0], err
}

// PutFiles delivers files one after another as PutFile does, asking the
// agent what it holds of them all in one StatFiles. On an error it returns
// the results of the files delivered before it.
func (c *Client) PutFiles(ctx context.Context, files []File) ([]PutResult, error) {
	sums := make([]string, len(files))
	sizes := make([]int64, len(files))
	paths := make([]string, len(files))
	for i, f := range files {
		var err error
		if sums[i], sizes[i], err = digest(f); err != nil {
			return nil, err
		}
		paths[i] = f.Path
	}
	st, err := c.api.StatFiles(ctx, &agentv1.StatFilesRequest{Paths: paths})
	if err != nil {
		return nil, c.wrap("stat "+strings.Join(paths, ", "), err)
	}
	held := map[string]string{} // path: the agent's digest
	for _, s := range st.GetFiles() {
		held[s.GetPath()] = s.GetSha256()
	}
	results := make([]PutResult, 0, len(files))
	for i, f := range files {
		if h := held[f.Path]; h != sums[i] && h != "" && slices.Contains(f.Equivalent, h) {
			results = append(results, PutResult{Path: f.Path})
			continue
		}
		r, err := c.put(ctx, f, sums[i], sizes[i], held[f.Path] == sums[i])
		if err != nil {
			return results, err
		}
		results = append(results, r)
	}
	return results, nil
}

// put delivers f of digest sum and size, sending no data when same (the
// agent holds that content).
func (c *Client) put(ctx context.Context, f File, sum string, size int64, same bool) (PutResult, error) {
	hdr := &agentv1.FileHeader{Path: f.Path, Size: uint64(size), Sha256: sum, Mode: f.Mode, Owner: f.Owner, Group: f.Group}
	stream, err := c.api.PutFile(ctx)
	if err != nil {
		return PutResult{}, c.wrap("put "+f.Path, err)
	}
	if err := stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: hdr}}); err != nil && err != io.EOF {
		return PutResult{}, c.wrap("put "+f.Path, err)
	}
	out := &chunkSender{stream: stream, f: f}
	defer out.close()
	if !same {
		if err := c.sendContent(ctx, out, size); err != nil {
			return PutResult{}, c.wrap("put "+f.Path, err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return PutResult{}, c.wrap("put "+f.Path, err)
	}
	return PutResult{Path: f.Path, Sent: resp.GetOutcome() == agentv1.FileOutcome_FILE_OUTCOME_WRITTEN, Bytes: out.wire, Compressed: out.frames > 0}, nil
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

// SidecarState reads the istio unit's state without changing it.
func (c *Client) SidecarState(ctx context.Context) (*agentv1.SidecarState, error) {
	r, err := c.api.GetSidecar(ctx, &agentv1.GetSidecarRequest{})
	if err != nil {
		return nil, c.wrap("sidecar state", err)
	}
	return r.GetSidecar(), nil
}

// SidecarLogs streams the sidecar's log lines to emit until the agent ends
// the stream (at once unless req.Follow) or ctx is done; emit's error stops it.
func (c *Client) SidecarLogs(ctx context.Context, req *agentv1.SidecarLogsRequest, emit func([]*agentv1.LogLine) error) error {
	stream, err := c.api.SidecarLogs(ctx, req)
	if err != nil {
		return c.wrap("logs", err)
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return c.wrap("logs", err)
		}
		if err := emit(resp.GetLines()); err != nil {
			return err
		}
	}
}

// ErrNoWatch is Watch's error for an agent without the watch.v1
// capability (an older release): its caller polls Status instead.
var ErrNoWatch = errors.New("the agent does not stream its state (no " + agentspec.WatchCapability + " capability): upgrade the agent, or poll its status")

// Watch streams the VM's state to emit, the whole state first and then
// each change, until ctx is done, the agent ends the stream or emit
// returns an error. The connection's keepalive pings make a silent loss of
// the VM end the stream within agentspec.KeepaliveTime + KeepaliveTimeout.
func (c *Client) Watch(ctx context.Context, req *agentv1.WatchRequest, emit func(*agentv1.WatchResponse) error) error {
	v, err := c.Version(ctx)
	if err != nil {
		return err
	}
	if !slices.Contains(v.GetCapabilities(), agentspec.WatchCapability) {
		return ErrNoWatch
	}
	stream, err := c.api.Watch(ctx, req)
	if err != nil {
		return c.wrap("watch", err)
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return c.wrap("watch", errors.New("the agent ended the stream"))
		}
		if err != nil {
			return c.wrap("watch", err)
		}
		if err := emit(resp); err != nil {
			return err
		}
	}
}

// ResolveDNS resolves req.Name on the VM; a name that does not resolve is
// the response's Error, not the call's.
func (c *Client) ResolveDNS(ctx context.Context, req *agentv1.ResolveDNSRequest) (*agentv1.ResolveDNSResponse, error) {
	r, err := c.api.ResolveDNS(ctx, req)
	return r, c.wrap("resolve "+req.GetName(), err)
}

// Probe checks a port on the VM's loopback; a port that does not answer is
// the response's Error, not the call's.
func (c *Client) Probe(ctx context.Context, req *agentv1.ProbeRequest) (*agentv1.ProbeResponse, error) {
	r, err := c.api.Probe(ctx, req)
	return r, c.wrap("probe", err)
}

// CallService has the agent call a mesh service through the sidecar.
func (c *Client) CallService(ctx context.Context, req *agentv1.CallServiceRequest) (*agentv1.CallServiceResponse, error) {
	r, err := c.api.CallService(ctx, req)
	return r, c.wrap("call "+req.GetHost(), err)
}

// CheckNetwork reports the VM's interfaces, routes and firewall backends.
func (c *Client) CheckNetwork(ctx context.Context) (*agentv1.CheckNetworkResponse, error) {
	r, err := c.api.CheckNetwork(ctx, &agentv1.CheckNetworkRequest{})
	return r, c.wrap("check network", err)
}
