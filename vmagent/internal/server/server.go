// Package server is vmagent's gRPC adapter: requests in, calls into the pkg/
// packages, responses out. Generated types stop here (see convert.go).
package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/buildinfo"
	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/filecodec"
	"github.com/meshvm/meshvm/pkg/fsroot"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/internal/capture"
	"github.com/meshvm/meshvm/vmagent/internal/dnscheck"
	"github.com/meshvm/meshvm/vmagent/internal/netcheck"
	"github.com/meshvm/meshvm/vmagent/internal/postinst"
	"github.com/meshvm/meshvm/vmagent/internal/probe"
	"github.com/meshvm/meshvm/vmagent/internal/sidecar"
	"github.com/meshvm/meshvm/vmagent/internal/vmfiles"
)

var _ agentv1.AgentServiceServer = (*Server)(nil)

// Capabilities the agent announces in GetVersion; hostctl checks them.
var Capabilities = []string{"install.v1", "files.v1", filecodec.Capability, "sidecar.v1", "logs.v1", "dns.v1", "probe.v1", "network.v1", "call.v1", "capture.v1", agentspec.WatchCapability}

// Sidecar controls the istio unit.
type Sidecar interface {
	State(ctx context.Context) (sidecar.State, error)
	Start(ctx context.Context) (sidecar.State, error)
	Stop(ctx context.Context) (sidecar.State, error)
	Restart(ctx context.Context) (sidecar.State, error)
	Logs(ctx context.Context, src sidecar.LogSource, tail int, follow bool, emit func([]sidecar.LogLine) error) error
}

// Deps wires a Server.
type Deps struct {
	Root      *fsroot.Root
	Installer *postinst.Installer
	Files     *vmfiles.Store
	Sidecar   Sidecar
	DNS       dnscheck.Resolver
	// Capture judges the capture rules in force; nil reports none.
	Capture *capture.Checker
}

// Server implements agentv1.AgentServiceServer.
type Server struct {
	agentv1.UnimplementedAgentServiceServer
	log     *slog.Logger
	deps    Deps
	started time.Time

	mu         sync.Mutex
	lastErrors map[string]string

	watch *watchHub
}

// New returns a Server.
func New(log *slog.Logger, deps Deps) *Server {
	s := &Server{log: log, deps: deps, started: time.Now(), lastErrors: map[string]string{}}
	s.watch = newWatchHub(s.observeVM, watchInterval)
	return s
}

// note records (or clears, on nil) the last error of a subsystem for status.
func (s *Server) note(subsystem string, err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.lastErrors, subsystem)
	} else {
		s.lastErrors[subsystem] = err.Error()
	}
	return err
}

func (s *Server) GetVersion(ctx context.Context, _ *agentv1.GetVersionRequest) (*agentv1.GetVersionResponse, error) {
	return &agentv1.GetVersionResponse{
		Version: buildinfo.String(), Capabilities: Capabilities,
		GoVersion: runtime.Version(), Os: runtime.GOOS, Arch: runtime.GOARCH,
	}, nil
}

// Where pilot-agent writes its certificate (OUTPUT_CERTS=./etc/certs).
const workloadCertPath = "/etc/certs/cert-chain.pem"

func (s *Server) GetStatus(ctx context.Context, _ *agentv1.GetStatusRequest) (*agentv1.GetStatusResponse, error) {
	host, _ := os.Hostname()
	resp := &agentv1.GetStatusResponse{
		Version:   buildinfo.String(),
		StartedAt: timestamppb.New(s.started),
		Uptime:    durationpb.New(time.Since(s.started).Round(time.Second)),
		Os:        runtime.GOOS, Arch: runtime.GOARCH, Hostname: host,
		OsRelease: osRelease(s.deps.Root),
	}
	st, err := s.deps.Sidecar.State(ctx)
	resp.Sidecar = sidecarState(st, err)
	if s.deps.Capture != nil {
		active := st.ActiveState
		if err != nil {
			active = ""
		}
		resp.Capture = captureVerdict(s.deps.Capture.Verdict(ctx, active))
	}
	resp.InstallSteps = stepResults(s.deps.Installer.Install(ctx, true, nil))

	// Both live where istio-proxy writes: credinfo reads them bounded, no links, regular files only.
	if c, err := credinfo.ReadCertificate(s.deps.Root, workloadCertPath); err == nil {
		resp.WorkloadCertificate = certInfo(workloadCertPath, c)
		s.note("certificate", nil)
	} else if !errors.Is(err, os.ErrNotExist) {
		s.note("certificate", err)
	}
	resp.Token = s.tokenStatus()
	if files, err := s.deps.Files.Stat(nil); err == nil {
		for _, f := range files {
			if f.Exists {
				resp.Files = append(resp.Files, fileStat(f))
			}
		}
		s.note("files", nil)
	} else {
		s.note("files", err)
	}
	s.mu.Lock()
	resp.LastErrors = make(map[string]string, len(s.lastErrors))
	for k, v := range s.lastErrors {
		resp.LastErrors[k] = v
	}
	s.mu.Unlock()
	return resp, nil
}

const tokenPath = agentspec.TokenPath

// tokenStatus describes the token pilot-agent reads, or the root-only copy
// when /run is empty after a reboot (until the sidecar starts), and says
// when the two differ. An error is kept for GetStatus's last_errors until
// the file reads again.
func (s *Server) tokenStatus() *agentv1.TokenInfo {
	spec, _ := vmfiles.Lookup(tokenPath)
	live, liveErr := s.deps.Root.ReadLimited(tokenPath, credinfo.MaxFile)
	kept, keptErr := s.deps.Root.ReadTrusted(spec.PersistAt, credinfo.MaxFile)
	raw, path, err := live, tokenPath, liveErr
	if errors.Is(liveErr, os.ErrNotExist) {
		raw, path, err = kept, spec.PersistAt, keptErr
	}
	if errors.Is(err, os.ErrNotExist) {
		s.note("token", nil)
		return nil
	}
	var tok credinfo.Token
	if err == nil {
		tok, err = credinfo.ParseToken(raw)
		if err != nil {
			err = fmt.Errorf("token %s: %w", path, err)
		}
	}
	if s.note("token", err) != nil {
		return nil
	}
	info := tokenInfo(path, spec.PersistAt, tok)
	info.DiffersFromPersistent = liveErr == nil && keptErr == nil && !bytes.Equal(bytes.TrimSpace(live), bytes.TrimSpace(kept))
	return info
}

func (s *Server) Install(ctx context.Context, req *agentv1.InstallRequest) (*agentv1.InstallResponse, error) {
	hosts, err := hostsEntries(req.GetHostsEntries())
	if err != nil {
		return nil, err
	}
	res := s.deps.Installer.Install(ctx, req.GetDryRun(), hosts)
	if !req.GetDryRun() {
		s.note("install", failure(res))
	}
	return &agentv1.InstallResponse{Steps: stepResults(res)}, nil
}

func (s *Server) Uninstall(ctx context.Context, req *agentv1.UninstallRequest) (*agentv1.UninstallResponse, error) {
	if !req.GetDryRun() {
		// The capture rules go with the unit's stop; a missing systemd is fine here.
		if _, err := s.deps.Sidecar.Stop(ctx); err != nil && !errors.Is(err, sidecar.ErrNoSystemd) {
			s.log.Warn("stop sidecar before uninstall", "err", err)
		}
	}
	res := s.deps.Installer.Uninstall(ctx, req.GetDryRun())
	if !req.GetDryRun() {
		s.note("install", failure(res))
	}
	return &agentv1.UninstallResponse{Steps: stepResults(res)}, nil
}

func failure(rs []postinst.Result) error {
	for _, r := range rs {
		if r.Outcome == postinst.Failed {
			return errors.New(r.Name + ": " + r.Detail)
		}
	}
	return nil
}

func (s *Server) StatFiles(ctx context.Context, req *agentv1.StatFilesRequest) (*agentv1.StatFilesResponse, error) {
	files, err := s.deps.Files.Stat(req.GetPaths())
	if err != nil {
		return nil, err
	}
	resp := &agentv1.StatFilesResponse{}
	for _, f := range files {
		resp.Files = append(resp.Files, fileStat(f))
	}
	return resp, nil
}

func (s *Server) PutFile(stream agentv1.AgentService_PutFileServer) error {
	first, err := stream.Recv()
	if _, ok := status.FromError(err); ok && err != nil {
		return err // cancelled, or stalled past the idle limit
	}
	if err != nil {
		return agenterr.Invalid("put file: no header received: %w", err)
	}
	h := first.GetHeader()
	if h == nil {
		return agenterr.Invalid("put file: the first message must be the header")
	}
	hdr := vmfiles.Header{Path: h.GetPath(), Size: h.GetSize(), SHA256: h.GetSha256(), Mode: h.GetMode(), Owner: h.GetOwner(), Group: h.GetGroup()}
	body := &chunkReader{stream: stream}
	defer body.close()
	outcome, err := s.deps.Files.Put(hdr, body)
	if errors.Is(err, vmfiles.ErrBusy) {
		return status.Error(codes.Aborted, err.Error())
	}
	if err != nil {
		return s.note("files", err)
	}
	s.note("files", nil)
	s.log.Info("file delivered", "path", hdr.Path, "bytes", body.n, "unchanged", outcome == vmfiles.Unchanged)
	return stream.SendAndClose(&agentv1.PutFileResponse{
		Path: hdr.Path, Outcome: fileOutcome(outcome), BytesReceived: uint64(body.n), Sha256: hdr.SHA256,
	})
}

// chunkReader turns the stream's chunk messages into an io.Reader. A
// goroutine receives and decodes ahead (zstd frames: one decoder per
// delivery, made at the first frame, and two ChunkSize buffers), so that
// decoding overlaps the write. A broken stream or a bad frame surfaces as
// a read error, which abandons the temporary file; the store stops reading
// past the declared size.
type chunkReader struct {
	stream agentv1.AgentService_PutFileServer
	ahead  chan piece
	free   chan []byte // decode buffers given back
	quit   chan struct{}
	cur    piece
	buf    []byte // what is left of cur
	err    error
	n      int64
}

// piece is one received message's content; pooled when its data is a
// decode buffer, to be given back.
type piece struct {
	data   []byte
	pooled bool
	err    error
}

// decodeBuffers bounds what one delivery holds decoded.
const decodeBuffers = 2

func (r *chunkReader) close() {
	if r.quit != nil {
		close(r.quit)
	}
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if r.quit == nil {
		r.ahead, r.free, r.quit = make(chan piece, 1), make(chan []byte, decodeBuffers), make(chan struct{})
		go r.readAhead()
	}
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.cur.pooled {
			r.free <- r.cur.data
		}
		r.cur = <-r.ahead
		r.buf, r.err = r.cur.data, r.cur.err
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	r.n += int64(n)
	return n, nil
}

// readAhead receives and decodes until the stream ends, an error, or close.
func (r *chunkReader) readAhead() {
	var (
		dec       *filecodec.Decoder
		allocated int
		decoded   int64
	)
	defer func() {
		if dec != nil {
			dec.Close()
		}
	}()
	for {
		var pc piece
		msg, err := r.stream.Recv()
		if err != nil {
			pc.err = err // io.EOF at the end
		}
		switch m := msg.GetMsg().(type) {
		case *agentv1.PutFileRequest_Chunk:
			pc.data = m.Chunk
		case *agentv1.PutFileRequest_ZstdChunk:
			var buf []byte
			select {
			case buf = <-r.free:
			default:
				if allocated < decodeBuffers {
					buf, allocated = filecodec.NewBuffer(), allocated+1
				} else {
					select {
					case buf = <-r.free:
					case <-r.quit:
						return
					}
				}
			}
			if dec == nil {
				if dec, pc.err = filecodec.NewDecoder(); pc.err != nil {
					break
				}
			}
			if pc.data, err = dec.Decode(buf, m.ZstdChunk); err != nil {
				pc.err = agenterr.Invalid("put file: after %d bytes: %w: send the file again, or plain", decoded, err)
			}
			pc.pooled = pc.err == nil
		case *agentv1.PutFileRequest_Header:
			pc.err = agenterr.Invalid("put file: a second header arrived mid-stream")
		}
		decoded += int64(len(pc.data))
		select {
		case r.ahead <- pc:
		case <-r.quit:
			return
		}
		if pc.err != nil {
			return
		}
	}
}

func (s *Server) ControlSidecar(ctx context.Context, req *agentv1.ControlSidecarRequest) (*agentv1.ControlSidecarResponse, error) {
	var (
		st  sidecar.State
		err error
	)
	switch req.GetAction() {
	case agentv1.SidecarAction_SIDECAR_ACTION_START:
		st, err = s.deps.Sidecar.Start(ctx)
	case agentv1.SidecarAction_SIDECAR_ACTION_STOP:
		st, err = s.deps.Sidecar.Stop(ctx)
	case agentv1.SidecarAction_SIDECAR_ACTION_RESTART:
		st, err = s.deps.Sidecar.Restart(ctx)
	default:
		return nil, agenterr.Invalid("sidecar action %v: want START, STOP or RESTART", req.GetAction())
	}
	if err = s.note("sidecar", err); err != nil {
		return nil, err
	}
	return &agentv1.ControlSidecarResponse{Sidecar: sidecarState(st, nil)}, nil
}

func (s *Server) GetSidecar(ctx context.Context, _ *agentv1.GetSidecarRequest) (*agentv1.GetSidecarResponse, error) {
	st, err := s.deps.Sidecar.State(ctx)
	if err != nil {
		return nil, err
	}
	return &agentv1.GetSidecarResponse{Sidecar: sidecarState(st, nil)}, nil
}

func (s *Server) SidecarLogs(req *agentv1.SidecarLogsRequest, stream agentv1.AgentService_SidecarLogsServer) error {
	src, err := logSource(req.GetSource())
	if err != nil {
		return err
	}
	tail := int(req.GetTailLines())
	if tail == 0 {
		tail = 100
	}
	ctx := stream.Context()
	return s.deps.Sidecar.Logs(ctx, src, tail, req.GetFollow(), func(lines []sidecar.LogLine) error {
		return sendBounded(ctx, func() error { return stream.Send(&agentv1.SidecarLogsResponse{Lines: logLines(lines)}) })
	})
}

const defaultCheckTimeout = 3 * time.Second

func timeoutOf(d *durationpb.Duration) time.Duration {
	if d == nil || d.AsDuration() <= 0 {
		return defaultCheckTimeout
	}
	return min(d.AsDuration(), 30*time.Second)
}

func (s *Server) ResolveDNS(ctx context.Context, req *agentv1.ResolveDNSRequest) (*agentv1.ResolveDNSResponse, error) {
	if req.GetName() == "" {
		return nil, agenterr.Invalid("resolve: name is empty")
	}
	via := dnscheck.ViaSystem
	switch req.GetVia() {
	case agentv1.DNSVia_DNS_VIA_SYSTEM, agentv1.DNSVia_DNS_VIA_UNSPECIFIED:
	case agentv1.DNSVia_DNS_VIA_ISTIO_PROXY:
		via = dnscheck.ViaIstioProxy
	default:
		return nil, agenterr.Invalid("resolve: unknown resolver %v", req.GetVia())
	}
	res := s.deps.DNS.Resolve(ctx, req.GetName(), via, timeoutOf(req.GetTimeout()))
	out := &agentv1.ResolveDNSResponse{Name: req.GetName(), Addresses: res.Addresses, Server: res.Server, Latency: durationpb.New(res.Latency)}
	if res.Err != nil {
		out.Error = res.Err.Error()
	}
	return out, nil
}

func (s *Server) Probe(ctx context.Context, req *agentv1.ProbeRequest) (*agentv1.ProbeResponse, error) {
	return s.runProbe(ctx, req)
}

// runProbe is Probe's work, shared with Watch's app probe.
func (s *Server) runProbe(ctx context.Context, req *agentv1.ProbeRequest) (*agentv1.ProbeResponse, error) {
	if req.GetPort() == 0 || req.GetPort() > 65535 {
		return nil, agenterr.Invalid("probe: port %d is out of range 1-65535", req.GetPort())
	}
	var res probe.Result
	switch req.GetKind() {
	case agentv1.ProbeKind_PROBE_KIND_HTTP:
		res = probe.HTTP(ctx, req.GetHost(), int(req.GetPort()), req.GetPath(), timeoutOf(req.GetTimeout()))
	case agentv1.ProbeKind_PROBE_KIND_TCP:
		res = probe.TCP(ctx, req.GetHost(), int(req.GetPort()), timeoutOf(req.GetTimeout()))
	default:
		return nil, agenterr.Invalid("probe: kind %v: want HTTP or TCP", req.GetKind())
	}
	if errors.Is(res.Err, probe.ErrNotLocal) {
		return nil, agenterr.Invalid("%w", res.Err)
	}
	out := &agentv1.ProbeResponse{Ok: res.OK, StatusCode: int32(res.StatusCode), Latency: durationpb.New(res.Latency)}
	if res.Err != nil {
		out.Error = res.Err.Error()
	}
	return out, nil
}

func (s *Server) CallService(ctx context.Context, req *agentv1.CallServiceRequest) (*agentv1.CallServiceResponse, error) {
	res := probe.Service(ctx, req.GetHost(), int(req.GetPort()), req.GetPath(), timeoutOf(req.GetTimeout()))
	if errors.Is(res.Err, probe.ErrNotService) || errors.Is(res.Err, probe.ErrBadPort) {
		return nil, agenterr.Invalid("%w", res.Err)
	}
	out := &agentv1.CallServiceResponse{Ok: res.OK, StatusCode: int32(res.StatusCode), Body: res.Body, Latency: durationpb.New(res.Latency)}
	if res.Err != nil {
		out.Error = res.Err.Error()
	}
	return out, nil
}

func (s *Server) CheckNetwork(ctx context.Context, _ *agentv1.CheckNetworkRequest) (*agentv1.CheckNetworkResponse, error) {
	rep, err := netcheck.Check(ctx, netcheck.Options{SvcIP: svcIP(s.deps.Root)})
	if err != nil {
		return nil, s.note("network", err)
	}
	return networkReport(rep), nil
}
