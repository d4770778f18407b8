//go:build linux

package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/buildinfo"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/reason"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/agenttest"
)

// The agent-facing commands against a real in-process agent (real gRPC,
// real mTLS with the certificates hostctl's state issues), outside the lab.
// Linux only: the agent is.

const testIstiodIP = "10.9.8.7"

// vmWithAgent is VM vm1: a running machine whose agent listens in this
// process at a loopback address of its own on the agent port, its sandbox
// /etc/hosts naming istiod as onboard writes it.
type vmWithAgent struct {
	state *statedir.Dir
	m     machine.Machine
	agent *agenttest.Agent
	ms    infoOnly
}

func startVM(t *testing.T) vmWithAgent {
	t.Helper()
	return startVMWith(t, agenttest.Options{})
}

// startVMWith is startVM with the agent shaped by o (its address, CA and
// certificate are the VM's).
func startVMWith(t *testing.T, o agenttest.Options) vmWithAgent {
	t.Helper()
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// onboard dials the agent port on the VM's address: each test takes an
	// address of 127/8 (all of it is loopback on Linux) for itself.
	ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(250), 1+rand.IntN(250))
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, onboard.AgentPort))
	if err != nil {
		t.Skipf("no loopback address %s here (%v): only 127.0.0.1 is, as on macOS", ip, err)
	}
	lis.Close()
	ca, err := state.AgentCA()
	if err != nil {
		t.Fatal(err)
	}
	pair, _, err := state.VMCert(ca, "vm1", []string{ip})
	if err != nil {
		t.Fatal(err)
	}
	o.Listen, o.CA, o.ServerCert, o.ServerKey = net.JoinHostPort(ip, onboard.AgentPort), ca, pair.Cert, pair.Key
	a := agenttest.Start(t, o)
	hosts := testIstiodIP + " istiod.istio-system.svc\n" + ip + " vm1\n"
	if err := os.WriteFile(filepath.Join(a.Root, "etc/hosts"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	m := machine.Machine{Name: "vm1", State: machine.Running, Addresses: []string{ip}, Arch: runtime.GOARCH}
	return vmWithAgent{state: state, m: m, agent: a, ms: infoOnly{m: map[string]machine.Machine{"vm1": m}}}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testMesh is the mesh the test's VMs join: istiod at testIstiodIP (or
// istiodErr), the embedded Istio on the default revision, and side as the
// sidecar's files (none: no build in a test).
type testMesh struct {
	istiodErr error
	side      onboard.Sidecar
}

func (testMesh) Revision(context.Context) string { return "" }

func (testMesh) ClusterID(context.Context) string { return "cluster1" }

func (m testMesh) IstiodAddress(context.Context, string) (string, error) {
	if m.istiodErr != nil {
		return "", m.istiodErr
	}
	return testIstiodIP, nil
}

func (m testMesh) Sidecar(context.Context, string, string) (onboard.Sidecar, error) {
	if m.side.PilotAgent == "" {
		return onboard.Sidecar{}, errors.New("no sidecar build in a test")
	}
	return m.side, nil
}

func (testMesh) IstiodVersion(context.Context, string) (string, string, error) {
	return istioinstall.EmbeddedVersion, "the test", nil
}

func TestStatusFromARealAgent(t *testing.T) {
	vm := startVM(t)
	s := vmStatus(testCtx(t), config.Default(), vmcore.DirStore{Dir: vm.state}, vm.ms, nil, nil, nil, false, config.VM{Name: "vm1"}, "")
	if s.Agent != "up "+buildinfo.String() || s.Machine != "running" || s.Address != vm.m.Address() {
		t.Errorf("got agent %q machine %q address %q", s.Agent, s.Machine, s.Address)
	}
	if s.IstiodDNS != testIstiodIP {
		t.Errorf("istiod DNS: got %q, want %s", s.IstiodDNS, testIstiodIP)
	}
	// The sandbox has no systemd and nothing on the app's port: both say why.
	if !strings.HasPrefix(s.Sidecar, "error: ") || !strings.Contains(s.Sidecar, "systemd") {
		t.Errorf("sidecar: got %q, want the systemd error", s.Sidecar)
	}
	if s.App == "" || strings.HasPrefix(s.App, "HTTP") || s.OK {
		t.Errorf("app: got %q (ok %v), want the probe's failure", s.App, s.OK)
	}
}

func TestVerifyChecksAgainstARealAgent(t *testing.T) {
	vm := startVM(t)
	ac, err := onboard.Dial(vm.state, vm.m.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	ctx := testCtx(t)
	if v := resolves(ctx, ac, "vm1", "istiod.istio-system.svc", testIstiodIP); v.Result != "ok" || !strings.Contains(v.Detail, "/etc/hosts") {
		t.Errorf("resolves: got %+v, want ok from /etc/hosts", v)
	}
	if v := resolves(ctx, ac, "vm1", "istiod.istio-system.svc", "10.0.0.1"); v.Result != Fail || !strings.HasSuffix(v.Detail, "want 10.0.0.1") || v.Reason != reason.HostsBlockStale {
		t.Errorf("resolves elsewhere: got %+v, want FAIL naming the fix", v)
	}
	// Nothing in the sandbox resolves the sample: the call's failure is the detail.
	if v := callFromVM(ctx, ac, "vm1"); v.Result != Fail || !strings.Contains(v.Detail, "helloworld.sample") {
		t.Errorf("call from VM: got %+v, want FAIL naming the service", v)
	}
}

func TestLogsFromARealAgent(t *testing.T) {
	vm := startVM(t)
	dir := filepath.Join(vm.agent.Root, "var/log/istio")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "istio.log"), []byte("one\ntwo\nthree\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	req := &agentv1.SidecarLogsRequest{Source: agentv1.LogSource_LOG_SOURCE_PROXY_LOG, TailLines: 2}
	if err := printLogs(testCtx(t), &out, vmcore.DirStore{Dir: vm.state}, vm.ms, "vm1", req); err != nil {
		t.Fatal(err)
	}
	if out.String() != "two\nthree\n" {
		t.Errorf("got %q, want the last two lines", out.String())
	}
	stopped := infoOnly{m: map[string]machine.Machine{"vm1": {Name: "vm1", State: machine.Stopped}}}
	err := printLogs(testCtx(t), &out, vmcore.DirStore{Dir: vm.state}, stopped, "vm1", req)
	if r, ok := reason.Of(err); !ok || r.Reason != reason.VMNotRunning || r.Args[0] != "vm1" {
		t.Errorf("stopped VM: got %v, want the way to start it", err)
	}
}

func TestDoctorAgainstARealAgent(t *testing.T) {
	vm := startVM(t)
	got := map[string]Finding{}
	for _, f := range vmChecks(testCtx(t), config.Default(), vmcore.DirStore{Dir: vm.state}, vm.ms, testMesh{}, "vm1", nil, false) {
		got[f.Check] = f
	}
	for check, result := range map[string]Result{"address": "ok", "agent": "ok", "istiod DNS": "ok", "hosts file": "fail", "proxy version": "warn"} {
		if got[check].Result != result {
			t.Errorf("%s: got %+v, want %s", check, got[check], result)
		}
	}
	if got["agent"].Detail != "vmagent "+buildinfo.String() {
		t.Errorf("agent: got %q", got["agent"].Detail)
	}
}

// An agent that does not answer is reported with the reason, in status and
// in doctor alike.
func TestUnreachableAgentSaysWhy(t *testing.T) {
	vm := startVM(t)
	// A VM whose address has no agent listening: its port refuses.
	gone := vm.m
	gone.Addresses = []string{"127.0.0.1"}
	if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", onboard.AgentPort)); err == nil {
		l.Close()
	} else {
		t.Skipf("the agent port on 127.0.0.1 is taken here: %v", err)
	}
	ms := infoOnly{m: map[string]machine.Machine{"vm1": gone}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s := vmStatus(ctx, config.Default(), vmcore.DirStore{Dir: vm.state}, ms, nil, nil, nil, false, config.VM{Name: "vm1"}, "")
	if s.Agent != "unreachable" || s.AgentError == "" || !strings.Contains(s.Next, s.AgentError) || s.Reason != reason.AgentDown {
		t.Errorf("got agent %q error %q next %q, want the reason and the fix", s.Agent, s.AgentError, s.Next)
	}
}

// doctor's checks after the agent answers each give a row, with the reason
// when they cannot tell (here: no sidecar build to compare with).
func TestDoctorRowsCarryTheReason(t *testing.T) {
	vm := startVM(t)
	got := map[string]Finding{}
	for _, f := range vmChecks(testCtx(t), config.Default(), vmcore.DirStore{Dir: vm.state}, vm.ms, testMesh{}, "vm1", nil, false) {
		got[f.Check] = f
	}
	if f := got["proxy version"]; !strings.Contains(f.Detail, "no sidecar build in a test") {
		t.Errorf("proxy version: got %+v, want the reason", f)
	}
	if f, ok := got["iptables"]; !ok || f.Detail == "" {
		t.Errorf("iptables: got %+v, want a row whatever the network check said", f)
	}
	if f := got["credentials"]; f.Result == "" {
		t.Errorf("credentials: no row")
	}
	// The test agent has no systemd: the capture rules are not judged, and doctor says why.
	if f := got["capture rules"]; f.Result != "warn" || !strings.Contains(f.Detail, "no systemd") {
		t.Errorf("capture rules: got %+v, want a warning naming the unknown sidecar state", f)
	}
	got = map[string]Finding{}
	for _, f := range vmChecks(testCtx(t), config.Default(), vmcore.DirStore{Dir: vm.state}, vm.ms, testMesh{istiodErr: errors.New("no east-west gateway address")}, "vm1", nil, false) {
		got[f.Check] = f
	}
	if f := got["istiod DNS"]; f.Result != "fail" || !strings.Contains(f.Detail, "no east-west gateway address") {
		t.Errorf("istiod DNS without istiod's address: got %+v, want fail with the reason", f)
	}
}

// hostctl keeps working with an agent older than capture.v1: status reads
// as it does with a current agent, with no verdict, and doctor asks for the
// agent to be upgraded instead of failing.
func TestStatusAndDoctorWithAnAgentBeforeCapture(t *testing.T) {
	current := startVM(t)
	older := startVMWith(t, agenttest.Options{Lacking: []string{"capture.v1"}})
	ctx := testCtx(t)
	ac, err := onboard.Dial(older.state, older.m.Address())
	if err != nil {
		t.Fatal(err)
	}
	v, err := ac.Version(ctx)
	ac.Close()
	if err != nil || slices.Contains(v.GetCapabilities(), "capture.v1") {
		t.Fatalf("the older agent announces %v (%v), want no capture.v1", v.GetCapabilities(), err)
	}
	want := vmStatus(ctx, config.Default(), vmcore.DirStore{Dir: current.state}, current.ms, nil, nil, nil, false, config.VM{Name: "vm1"}, "")
	got := vmStatus(ctx, config.Default(), vmcore.DirStore{Dir: older.state}, older.ms, nil, nil, nil, false, config.VM{Name: "vm1"}, "")
	if got.Capture != nil || got.CaptureSummary() != "" {
		t.Errorf("capture from an agent without a verdict: %+v", got.Capture)
	}
	if got.OK != want.OK || got.Agent != want.Agent || got.IstiodDNS != want.IstiodDNS || got.Credentials != want.Credentials || got.Next != want.Next {
		t.Errorf("status with the older agent %+v, want it as with a current one %+v (capture aside)", got, want)
	}
	findings := map[string]Finding{}
	for _, f := range vmChecks(ctx, config.Default(), vmcore.DirStore{Dir: older.state}, older.ms, testMesh{}, "vm1", nil, false) {
		findings[f.Check] = f
	}
	if f := findings["capture rules"]; f.Result != Warn || f.Reason != reason.AgentOutdated {
		t.Errorf("doctor's capture finding with the older agent: %+v, want a warning to upgrade the agent", f)
	}
	if f := findings["agent"]; f.Result != OK {
		t.Errorf("doctor's agent finding: %+v, want ok", f)
	}
}
