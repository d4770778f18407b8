// Package agenttest runs a real vmagent server in the test's process: the
// real handlers over a sandbox root, real gRPC, real mutual TLS, on
// loopback. Tests of the agent and of hostctl's agent-facing commands use
// it instead of mocks, so `go test ./...` without the lab still exercises
// them end to end.
package agenttest

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/mtls"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/config"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/capture"
	"github.com/meshvm/meshvm/vmagent/internal/dnscheck"
	"github.com/meshvm/meshvm/vmagent/internal/postinst"
	"github.com/meshvm/meshvm/vmagent/internal/server"
	"github.com/meshvm/meshvm/vmagent/internal/sidecar"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
	"github.com/meshvm/meshvm/vmagent/internal/vmfiles"
)

// Options shape the agent; the zero value is a fresh CA on 127.0.0.1, any port.
type Options struct {
	// Limits default to the agent's.
	Limits *config.Limits
	// Listen is the host:port to listen on.
	Listen string
	// CA signs the agent's certificate and its callers'; ServerCert and
	// ServerKey, when set, are the agent's (as hostctl's state issues them).
	CA                    *mtls.CA
	ServerCert, ServerKey []byte
	// Wrap, when set, serves its service in front of the agent's (an agent
	// of an older release, say).
	Wrap func(*server.Server) agentv1.AgentServiceServer
	// Lacking are capabilities the agent does not announce, as an agent of
	// an older release: "watch.v1" also makes Watch an unknown method, as
	// gRPC answers one (Unimplemented); "capture.v1" leaves GetStatus's
	// capture verdict unset.
	Lacking []string
}

// Agent is a running agent.
type Agent struct {
	// Addr is where it listens; Root the sandbox it treats as /.
	Addr, Root string
	CA         *mtls.CA
	// Guard counts what the agent holds, for tests of its limits.
	Guard *server.Guard

	mu    sync.Mutex
	calls map[string]int
}

// Calls is how many times each RPC was called, by method name
// ("GetVersion"), whatever its outcome.
func (a *Agent) Calls() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.calls)
}

func (a *Agent) count(fullMethod string) {
	a.mu.Lock()
	a.calls[path.Base(fullMethod)]++
	a.mu.Unlock()
}

// Start starts an agent that stops when the test ends. Its sandbox has the
// directories and users a VM image has, and no systemd: the sidecar calls
// fail promptly saying so.
func Start(t testing.TB, o Options) *Agent {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"etc/certs", "var/lib/istio/envoy", "var/lib/istio/config", "usr/local/bin", "run", "var/lib"} {
		must(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	must(t, os.Symlink("/run", filepath.Join(dir, "var/run")))
	must(t, os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\nistio-proxy:x:1337:1337::/var/lib/istio:/usr/sbin/nologin\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "etc/group"), []byte("root:x:0:\nistio-proxy:x:1337:\n"), 0o644))

	ca, cert, key := o.CA, o.ServerCert, o.ServerKey
	var err error
	if ca == nil {
		ca, err = mtls.NewCA("test agent CA", time.Hour)
		must(t, err)
	}
	if cert == nil {
		cert, key, err = ca.IssueServer("vmagent", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
		must(t, err)
	}
	tlsCfg, err := mtls.ServerConfig(cert, key, ca.CertPEM())
	must(t, err)
	limits := config.Default().Limits
	if o.Limits != nil {
		limits = *o.Limits
	}
	listen := o.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	root, err := fsroot.New(dir)
	must(t, err)
	users := sysusers.New(root)
	state := agentstate.New(root)
	guard := server.NewGuard(log, limits)
	a := &Agent{Root: dir, CA: ca, Guard: guard, calls: map[string]int{}}
	// Counted outside the agent's own interceptors: every call that arrives.
	count := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			a.count(info.FullMethod)
			resp, err := h(ctx, req)
			if err == nil {
				older(o.Lacking, resp)
			}
			return resp, err
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			a.count(info.FullMethod)
			if info.FullMethod == agentv1.AgentService_Watch_FullMethodName && slices.Contains(o.Lacking, agentspec.WatchCapability) {
				return status.Errorf(codes.Unimplemented, "unknown method Watch for service %s", agentv1.AgentService_ServiceDesc.ServiceName)
			}
			return h(srv, ss)
		}),
	}
	srv := grpc.NewServer(append(count, guard.Options(tlsCfg)...)...)
	agent := server.New(log, server.Deps{
		Root:      root,
		Installer: postinst.New(log, postinst.Options{Root: root, Users: users, State: state}),
		Files:     vmfiles.NewStore(log, root, users, state),
		// A sandbox has no systemd: the real manager must say so, promptly.
		Sidecar: sidecar.New(log, sidecar.Options{Root: dir, SystemdSocket: filepath.Join(dir, "run/systemd/private"), ConnectTimeout: 2 * time.Second}),
		DNS:     dnscheck.DefaultResolver(dir),
		Capture: &capture.Checker{Root: root, EnvPath: postinst.SidecarEnvPath, AgentPort: 7443},
	})
	var svc agentv1.AgentServiceServer = agent
	if o.Wrap != nil {
		svc = o.Wrap(agent)
	}
	agentv1.RegisterAgentServiceServer(srv, svc)
	lis, err := net.Listen("tcp", listen)
	must(t, err)
	go srv.Serve(guard.Listener(lis))
	t.Cleanup(srv.Stop)
	a.Addr = lis.Addr().String()
	return a
}

// ClientTLS is hostctl's side of mTLS: a client certificate of the agent's CA.
func (a *Agent) ClientTLS(t testing.TB) *tls.Config {
	t.Helper()
	cert, key, err := a.CA.IssueClient("hostctl", time.Hour)
	must(t, err)
	cfg, err := mtls.ClientConfig(cert, key, a.CA.CertPEM(), "localhost")
	must(t, err)
	return cfg
}

// Client dials the agent with cfg; it is closed when the test ends.
func (a *Agent) Client(t testing.TB, cfg *tls.Config) *agentclient.Client {
	t.Helper()
	c, err := agentclient.Dial(a.Addr, cfg)
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// older takes from resp what an agent lacking those capabilities leaves out.
func older(lacking []string, resp any) {
	switch r := resp.(type) {
	case *agentv1.GetVersionResponse:
		r.Capabilities = slices.DeleteFunc(slices.Clone(r.Capabilities), func(c string) bool { return slices.Contains(lacking, c) })
	case *agentv1.GetStatusResponse:
		if slices.Contains(lacking, "capture.v1") {
			r.Capture = nil
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
