// Package agentproc runs real vmagent processes against sandbox roots on
// loopback, for the benchmarks: one CA, one server certificate for
// 127.0.0.1, one client certificate, as hostctl would have them.
package agentproc

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshvm/meshvm/pkg/buildinfo"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/mtls"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Build compiles the agent as `make build` does (its RSS counts its text),
// from the module the working directory is in (a test runs in its
// package's directory).
func Build(work string) (string, error) {
	bin := filepath.Join(work, "vmagent")
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module: %w", err)
	}
	build := exec.Command("go", "build", "-trimpath", "-tags", buildinfo.AgentTags, "-ldflags", "-s -w", "-o", bin, "./vmagent")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build vmagent: %w", err)
	}
	return bin, nil
}

// Fleet starts agents that trust one client.
type Fleet struct {
	bin, dir  string
	ClientTLS *tls.Config
	agents    []*Agent
	// ip is where the agents listen; netns, when set, the network
	// namespace they run in (ip netns exec).
	ip    net.IP
	netns string
	// Config is appended to each agent's vmagent.yaml (a limits: block).
	Config string
	// Env is added to each agent's environment (GOMEMLIMIT, as the unit sets it).
	Env []string
	// owned: Close removes dir (BuildFleet made it).
	owned bool
}

// Agent is one running vmagent.
type Agent struct {
	Addr string
	Cmd  *exec.Cmd
}

// BuildFleet makes a work directory named for prefix, builds the agent into
// it and issues a fleet's certificates there, for agents on loopback; Close
// stops the agents and removes the directory.
func BuildFleet(prefix string) (*Fleet, error) {
	work, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		return nil, err
	}
	bin, err := Build(work)
	if err == nil {
		var f *Fleet
		if f, err = NewFleet(bin, work); err == nil {
			f.owned = true
			return f, nil
		}
	}
	os.RemoveAll(work)
	return nil, err
}

// Close stops every agent and removes the work directory BuildFleet made.
func (f *Fleet) Close() {
	f.Stop()
	if f.owned {
		os.RemoveAll(f.dir)
	}
}

// Bin is the agent binary; Dir the work directory.
func (f *Fleet) Bin() string { return f.bin }

// Dir is the fleet's work directory (certificates, configs, sandboxes).
func (f *Fleet) Dir() string { return f.dir }

// NewFleet issues the certificates under dir, for agents on loopback.
func NewFleet(bin, dir string) (*Fleet, error) {
	return NewFleetIn(bin, dir, "", net.ParseIP("127.0.0.1"))
}

// NewFleetIn is NewFleet for agents that run in the network namespace
// netns and listen on ip there.
func NewFleetIn(bin, dir, netns string, ip net.IP) (*Fleet, error) {
	ca, err := mtls.NewCA("bench CA", time.Hour)
	if err != nil {
		return nil, err
	}
	srvCert, srvKey, err := ca.IssueServer("vmagent", []string{"localhost"}, []net.IP{ip}, time.Hour)
	if err != nil {
		return nil, err
	}
	cliCert, cliKey, err := ca.IssueClient("hostctl", time.Hour)
	if err != nil {
		return nil, err
	}
	for name, data := range map[string][]byte{"server.pem": srvCert, "server-key.pem": srvKey, "client-ca.pem": ca.CertPEM()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	clientTLS, err := mtls.ClientConfig(cliCert, cliKey, ca.CertPEM(), "localhost")
	if err != nil {
		return nil, err
	}
	return &Fleet{bin: bin, dir: dir, ClientTLS: clientTLS, ip: ip, netns: netns}, nil
}

// Start runs one more agent on a free loopback port with its own sandbox root.
func (f *Fleet) Start() (*Agent, error) {
	n := len(f.agents)
	root := f.RootOf(n)
	if err := sandbox(root); err != nil {
		return nil, err
	}
	addr, err := f.freePort()
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf("version: 1\nlisten: %q\ntls:\n  cert: %s\n  key: %s\n  client_ca: %s\n", addr,
		filepath.Join(f.dir, "server.pem"), filepath.Join(f.dir, "server-key.pem"), filepath.Join(f.dir, "client-ca.pem")) + f.Config
	cfgPath := filepath.Join(f.dir, fmt.Sprintf("vmagent-%d.yaml", n))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(f.bin, "serve", "--config", cfgPath, "--root", root, "--log-level", "warn")
	if f.netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", f.netns}, cmd.Args...)...)
	}
	cmd.Stderr = os.Stderr
	cmd.Env = append(os.Environ(), f.Env...)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	a := &Agent{Addr: addr, Cmd: cmd}
	f.agents = append(f.agents, a)
	return a, nil
}

// Dial connects to a with the fleet's client certificate.
func (f *Fleet) Dial(a *Agent) (*agentclient.Client, error) {
	return agentclient.Dial(a.Addr, f.ClientTLS)
}

// DialRaw is a bare gRPC client of the agent, with hostctl's certificate,
// for benchmarks that misbehave on purpose (a delivery that stalls):
// agentclient has no call for that.
func (f *Fleet) DialRaw(a *Agent) (agentv1.AgentServiceClient, *grpc.ClientConn, error) {
	conn, err := grpc.NewClient(a.Addr, grpc.WithTransportCredentials(credentials.NewTLS(f.ClientTLS)))
	if err != nil {
		return nil, nil, err
	}
	return agentv1.NewAgentServiceClient(conn), conn, nil
}

// Stop kills every agent.
func (f *Fleet) Stop() {
	for _, a := range f.agents {
		a.Cmd.Process.Kill()
		a.Cmd.Wait()
	}
}

// WaitReady waits until the agent answers.
func WaitReady(ctx context.Context, c *agentclient.Client) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := c.Version(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent not ready after 20s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RSSMiB is a process's resident set.
func RSSMiB(pid int) (float64, error) { return statusMiB(pid, "VmRSS:") }

// PeakRSSMiB is the most a process has had resident since it started or
// since ResetPeakRSS.
func PeakRSSMiB(pid int) (float64, error) { return statusMiB(pid, "VmHWM:") }

// ResetPeakRSS starts PeakRSSMiB again from the current resident set.
func ResetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

func statusMiB(pid int, field string) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024, err
		}
	}
	return 0, fmt.Errorf("no %s for pid %d", field, pid)
}

func sandbox(root string) error {
	for _, d := range []string{"etc", "usr/local/bin", "var/lib"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\nistio-proxy:x:1337:1337::/var/lib/istio:/usr/sbin/nologin\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nistio-proxy:x:1337:\n"), 0o644)
}

// RootOf is the sandbox root of the n-th agent started.
func (f *Fleet) RootOf(n int) string { return filepath.Join(f.dir, fmt.Sprintf("root-%d", n)) }

// freePort is a free port on loopback; in a namespace, where this process
// cannot look, the agent's own 7443 plus one per agent.
func (f *Fleet) freePort() (string, error) {
	if f.netns != "" {
		return net.JoinHostPort(f.ip.String(), strconv.Itoa(7443+len(f.agents))), nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
