// Package inproc serves the real agent inside a process that is not a VM's:
// the real handlers and guard over a sandbox root, with real gRPC and mutual
// TLS. agenttest (one agent per test) and agentsim (a fleet of them) share it,
// so both run the agent exactly as it is built.
package inproc

import (
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"

	"github.com/meshvm/meshvm/pkg/fsroot"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/config"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/capture"
	"github.com/meshvm/meshvm/vmagent/internal/dnscheck"
	"github.com/meshvm/meshvm/vmagent/internal/postinst"
	"github.com/meshvm/meshvm/vmagent/internal/server"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
	"github.com/meshvm/meshvm/vmagent/internal/vmfiles"
)

// Sandbox lays out dir as a VM image has it for the agent: the directories
// it writes into, /var/run linking to /run, and the root and istio-proxy
// users.
func Sandbox(dir string) error {
	for _, d := range []string{"etc/certs", "var/lib/istio/envoy", "var/lib/istio/config", "usr/local/bin", "run", "var/lib"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Symlink("/run", filepath.Join(dir, "var/run")); err != nil && !os.IsExist(err) {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\nistio-proxy:x:1337:1337::/var/lib/istio:/usr/sbin/nologin\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "etc/group"), []byte("root:x:0:\nistio-proxy:x:1337:\n"), 0o644)
}

// Config is one agent.
type Config struct {
	// Root is the sandbox the agent treats as / (see Sandbox).
	Root string
	TLS  *tls.Config
	// Limits are the guard's.
	Limits  config.Limits
	Sidecar server.Sidecar
	// Addresses, when set, are what Watch reports as the VM's addresses.
	Addresses func() []string
	Log       *slog.Logger
	// Options come before the guard's (interceptors that see every call).
	Options []grpc.ServerOption
	// Wrap, when set, serves its service in front of the agent's.
	Wrap func(*server.Server) agentv1.AgentServiceServer
}

// Agent is an agent ready to serve.
type Agent struct {
	GRPC  *grpc.Server
	Guard *server.Guard
}

// New builds the agent as vmagent serve does, over c.Root.
func New(c Config) (*Agent, error) {
	root, err := fsroot.New(c.Root)
	if err != nil {
		return nil, err
	}
	users := sysusers.New(root)
	state := agentstate.New(root)
	guard := server.NewGuard(c.Log, c.Limits)
	srv := grpc.NewServer(append(c.Options, guard.Options(c.TLS)...)...)
	agent := server.New(c.Log, server.Deps{
		Root:      root,
		Installer: postinst.New(c.Log, postinst.Options{Root: root, Users: users, State: state}),
		Files:     vmfiles.NewStore(c.Log, root, users, state),
		Sidecar:   c.Sidecar,
		DNS:       dnscheck.DefaultResolver(c.Root),
		Capture:   &capture.Checker{Root: root, EnvPath: postinst.SidecarEnvPath, AgentPort: 7443},
		Addresses: c.Addresses,
	})
	var svc agentv1.AgentServiceServer = agent
	if c.Wrap != nil {
		svc = c.Wrap(agent)
	}
	agentv1.RegisterAgentServiceServer(srv, svc)
	return &Agent{GRPC: srv, Guard: guard}, nil
}

// Serve serves on lis through the guard's listener until the server stops.
func (a *Agent) Serve(lis net.Listener) error { return a.GRPC.Serve(a.Guard.Listener(lis)) }
