//go:build linux

package fleet

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	istiometa "istio.io/api/meta/v1alpha1"
	networkingv1 "istio.io/api/networking/v1"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshvm/meshvm/pkg/buildinfo"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/machine/machinetest"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/reason"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/agenttest"
)

// stepLines keeps the lines a Reporter is told: step, VM, message and the
// cause's reason in brackets.
type stepLines []string

func (s *stepLines) report(e progress.Event) {
	*s = append(*s, eventLine(e))
}

func eventLine(e progress.Event) string {
	return string(e.Step) + " " + e.VM + ": " + bracket(e.Message, e.Cause)
}

// worded is err with each reason it carries in brackets, where the CLI
// puts the advice it words from it.
func worded(err error) string {
	if err == nil {
		return ""
	}
	return reason.Format(err, bracket)
}

func bracket(msg string, c reason.Cause) string {
	if c.Reason == "" {
		return msg
	}
	return msg + " [" + strings.Join(append([]string{string(c.Reason)}, c.Args...), " ") + "]"
}

func driveSession(t *testing.T, ms machine.Provider) (*session, *stepLines) {
	t.Helper()
	vm := startVM(t)
	lines := &stepLines{}
	mesh := testMesh{}
	cfg := config.Default()
	cfg.VMs = []config.VM{{Name: "vm1"}}
	return &session{cfg: cfg, state: vm.state, machines: ms, mesh: mesh, spec: WorkloadSpec(cfg), p: lines.report,
		store: vmcore.DirStore{Dir: vm.state, VMs: []string{"vm1"}}, targets: vmcore.NewTargets(mesh, istioinstall.Namespace, nil)}, lines
}

// vm onboard on a VM that is not running fails at once with the advice it
// has always given, chosen from the core's reason.
func TestConvergeGivesTheMachineAdvice(t *testing.T) {
	for _, tc := range []struct {
		name string
		ms   map[string]machine.Machine
		want string
	}{
		{"absent", nil, "no VM vm1 [VMNotFound vm1]"},
		{"stopped", map[string]machine.Machine{"vm1": {Name: "vm1", State: machine.Stopped}}, "VM vm1 is stopped [VMNotRunning vm1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, lines := driveSession(t, infoOnly{m: tc.ms})
			start := time.Now()
			_, err := r.converge(testCtx(t), r.onboardSpec(config.VM{Name: "vm1"}, true, false), drive{tellAgent: true})
			if got := worded(err); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			if time.Since(start) > 5*time.Second || len(*lines) != 0 {
				t.Errorf("took %s with lines %q, want an immediate error and no line", time.Since(start), *lines)
			}
		})
	}
}

// Waiting ends as it always has: 30 s for an agent, 2 minutes for the
// entry after the files went out, each with the reason's words.
func TestGiveUpChoosesTheAdviceFromTheReason(t *testing.T) {
	spec := vmcore.Spec{Name: "vm1", RunsApp: true, ProbePort: 8000}
	status := func(set ...vmcore.Condition) vmcore.Status {
		st := vmcore.Status{Address: "10.0.0.7"}
		for _, c := range set {
			st.Conditions.Set(c, time.Now().Add(-time.Minute))
		}
		return st
	}
	cause := errors.New("connection refused")
	longAgo := time.Now().Add(-3 * time.Minute)
	for _, tc := range []struct {
		name   string
		spec   vmcore.Spec
		res    vmcore.Result
		synced time.Time
		want   string // "" is: keep waiting
	}{
		{"agent down for a minute", spec, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.AgentReachable, Status: vmcore.False, Reason: vmcore.AgentUnreachable}), Cause: cause}, time.Time{},
			"vm1: agent not answering after 30s: connection refused [AgentNotAnswering]"},
		{"entry awaited for a second", spec, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.Registered, Status: vmcore.False, Reason: vmcore.NoEntry})}, time.Now().Add(-time.Second), ""},
		{"no entry", spec, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.Registered, Status: vmcore.False, Reason: vmcore.NoEntry})}, longAgo,
			"no WorkloadEntry for 10.0.0.7 after 2m0s: the sidecar has not reached istiod [EntryTimedOut]"},
		{"not reconnected", spec, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.Healthy, Status: vmcore.False, Reason: vmcore.NotReconnected})}, longAgo,
			"WorkloadEntry : the restarted sidecar has not reconnected and reported health after 2m0s [EntryTimedOut]"},
		{"not healthy", spec, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.Healthy, Status: vmcore.False, Reason: vmcore.EntryNotHealthy})}, longAgo,
			"WorkloadEntry  not Healthy after 2m0s (no health report yet): is the app listening on port 8000?"},
		{"own app not connected", vmcore.Spec{Name: "vm1"}, vmcore.Result{Status: status(vmcore.Condition{Type: vmcore.Registered, Status: vmcore.False, Reason: vmcore.NotReconnected})}, longAgo,
			"WorkloadEntry : the sidecar has not (re)connected to istiod after 2m0s [EntryTimedOut]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := giveUp(tc.spec, tc.res, tc.synced, drive{})
			got := worded(err)
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			if tc.res.Cause != nil && got != "" && !errors.Is(err, cause) {
				t.Errorf("the cause is not wrapped: %v", err)
			}
		})
	}
}

// activeSidecar answers the sidecar's start as systemd would for a unit
// that started: the agent's sandbox has no systemd.
type activeSidecar struct{ agentv1.AgentServiceServer }

func (activeSidecar) ControlSidecar(context.Context, *agentv1.ControlSidecarRequest) (*agentv1.ControlSidecarResponse, error) {
	return &agentv1.ControlSidecarResponse{Sidecar: &agentv1.SidecarState{Unit: "istio.service", LoadState: "loaded", ActiveState: "active", SubState: "running"}}, nil
}

func withActiveSidecar[S agentv1.AgentServiceServer](s S) agentv1.AgentServiceServer {
	return activeSidecar{s}
}

// fakeCluster holds what onboarding reads from the cluster: the mesh
// config, istiod's root certificate, the WorkloadGroup, and tokens.
func fakeCluster(spec workload.Spec) workload.Clients {
	kc := fake.NewClientset(
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: istioinstall.Namespace}, Data: map[string]string{"mesh": "defaultConfig: {}\n"}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-root-cert", Namespace: spec.Namespace}, Data: map[string]string{"root-cert.pem": "ROOT\n"}},
	)
	// The fake API server keeps no tokens: answer a TokenRequest as one would.
	kc.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, k8sruntime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenRequest).DeepCopy()
		life := time.Duration(*tr.Spec.ExpirationSeconds) * time.Second
		tr.Status = authv1.TokenRequestStatus{Token: "issued-token", ExpirationTimestamp: metav1.NewTime(time.Now().Add(life))}
		return true, tr, nil
	})
	ic := istiofake.NewSimpleClientset(&clientnetworking.WorkloadGroup{ObjectMeta: metav1.ObjectMeta{Name: spec.Group, Namespace: spec.Namespace},
		Spec: networkingv1.WorkloadGroup{Template: &networkingv1.WorkloadEntry{ServiceAccount: spec.ServiceAccount}}})
	return workload.Clients{Kube: kc, Istio: ic}
}

// vm onboard through the core, from the first pass to Healthy: the lines
// are the ones hostctl has always printed, the wait for the entry ends on
// the watch (well inside the core's 5 s requeue), and the RPCs to the agent
// are counted.
// driveFixture is a session over one VM whose agent is real (its sidecar
// start answered as systemd would) and whose cluster is fake.
type driveFixture struct {
	r           *session
	vm          vmWithAgent
	lines       *lockedLines
	addr, entry string
}

func newDriveFixture(t *testing.T) driveFixture {
	t.Helper()
	var o agenttest.Options
	o.Wrap = withActiveSidecar // inferred: the agent's server type is internal to vmagent
	vm := startVMWith(t, o)
	dir := t.TempDir()
	side := onboard.Sidecar{PilotAgent: filepath.Join(dir, "pilot-agent"), Envoy: filepath.Join(dir, "envoy"), BootstrapTemplate: filepath.Join(dir, "bootstrap.json")}
	for _, f := range []string{side.PilotAgent, side.Envoy, side.BootstrapTemplate} {
		if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config.Default()
	cfg.VMs = []config.VM{{Name: "vm1"}}
	mesh := testMesh{side: side}
	spec := WorkloadSpec(cfg)
	lines := &lockedLines{}
	r := &session{cfg: cfg, state: vm.state, machines: vm.ms, mesh: mesh, spec: spec, clients: fakeCluster(spec), p: lines.report,
		store: vmcore.DirStore{Dir: vm.state, VMs: []string{"vm1"}}, targets: vmcore.NewTargets(mesh, istioinstall.Namespace, nil)}
	addr := vm.m.Address()
	return driveFixture{r: r, vm: vm, lines: lines, addr: addr, entry: "external-app-" + addr}
}

// registerWhenStarted is istiod: once the sidecar is up, it registers the
// VM's WorkloadEntry, Healthy.
func (d driveFixture) registerWhenStarted(ctx context.Context) {
	for !d.lines.contains("sidecar active") {
		if ctx.Err() != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	spec := d.r.spec
	we := &clientnetworking.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{Name: d.entry, Namespace: spec.Namespace,
		Annotations: map[string]string{"istio.io/autoRegistrationGroup": spec.Group, "istio.io/connectedAt": time.Now().Format(time.RFC3339Nano)}}}
	we.Spec.Address = d.addr
	we.Status.Conditions = []*istiometa.IstioCondition{{Type: "Healthy", Status: "True", LastProbeTime: timestamppb.Now()}}
	d.r.clients.Istio.NetworkingV1().WorkloadEntries(spec.Namespace).Create(ctx, we, metav1.CreateOptions{})
}

func TestConvergeOnboardsToHealthyWithTheSameLines(t *testing.T) {
	d := newDriveFixture(t)
	r, vm, lines, addr, entry := d.r, d.vm, d.lines, d.addr, d.entry
	ctx := testCtx(t)
	go d.registerWhenStarted(ctx)
	start := time.Now()
	st, err := r.converge(ctx, r.onboardSpec(r.cfg.VMs[0], true, false), drive{tellAgent: true})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("took %s: the entry's change did not wake the driver", took)
	}
	want := []string{
		"agent vm1: answering on " + addr + ":" + onboard.AgentPort,
		"onboard vm1: revision default, Istio " + istioinstall.EmbeddedVersion + " (its istiod's)",
		"onboard vm1: sent /usr/local/bin/pilot-agent, /usr/local/bin/envoy, /var/lib/istio/envoy/envoy_bootstrap_tmpl.json, /var/lib/istio/envoy/cluster.env, " +
			"/etc/istio/config/mesh, /etc/certs/root-cert.pem, /var/run/secrets/tokens/istio-token; 0 file(s) already in place; sidecar active (restarted)",
		"healthy vm1: WorkloadEntry " + entry + " Healthy",
	}
	if got := lines.all(); !slices.Equal(got, want) {
		t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if st.Entry.Name != entry || !st.Conditions.IsTrue(vmcore.Healthy) || !st.Conditions.IsTrue(vmcore.Ready) {
		t.Errorf("status: entry %q, conditions %+v", st.Entry.Name, st.Conditions)
	}
	if got, _ := (vmcore.DirStore{Dir: vm.state}).Address("vm1"); got != addr {
		t.Errorf("address recorded: %q, want %s", got, addr)
	}
	// One onboarding's RPCs: the version once, the postinst before and after
	// the binaries, one StatFiles for every file, a PutFile for each sent,
	// the sidecar's start.
	wantCalls := map[string]int{"GetVersion": 1, "Install": 2, "StatFiles": 1, "PutFile": 7, "ControlSidecar": 1}
	if calls := vm.agent.Calls(); !maps.Equal(calls, wantCalls) {
		t.Errorf("RPCs: got %v, want %v", calls, wantCalls)
	}
}

// lockedLines keeps the lines a Reporter is told, from any goroutine.
type lockedLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *lockedLines) report(e progress.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, eventLine(e))
}

func (l *lockedLines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

func (l *lockedLines) contains(s string) bool {
	return slices.ContainsFunc(l.all(), func(line string) bool { return strings.Contains(line, s) })
}

// up through the core, provisioning included: the lines up has always
// printed, in its order (machine, app, agent, onboarding, Healthy), and a
// VM on another revision than the site's says so.
func TestConvergeProvisionsAsUpDoes(t *testing.T) {
	d := newDriveFixture(t)
	ctx := testCtx(t)
	r := d.r
	ms := machinetest.New(d.vm.m)
	ms.Answer = func(script string) []byte {
		if strings.Contains(script, "command -v python3") {
			return []byte("python3\n") // a VM with python3, for the app
		}
		return nil
	}
	r.machines = ms
	r.agentBinary = func(arch string) ([]byte, error) { return []byte("vmagent for " + arch), nil }
	// vm1 was onboarded onto revision canary; the site's VMs join the default.
	if err := r.store.SetJoined("vm1", vmcore.Joined{Revision: "canary", Istio: istioinstall.EmbeddedVersion}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.clients.Kube.CoreV1().ConfigMaps(istioinstall.Namespace).Create(ctx,
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-canary", Namespace: istioinstall.Namespace}, Data: map[string]string{"mesh": "defaultConfig: {}\n"}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	go d.registerWhenStarted(ctx)
	if _, err := r.converge(ctx, r.provisionSpec(r.cfg.VMs[0]), drive{tellAgent: true}); err != nil {
		t.Fatal(err)
	}
	lines := d.lines.all()
	want := []string{
		"machine vm1: running at " + d.addr,
		"app vm1: python3 -m http.server on port 8000 (meshvm-app.service installed and started)",
		"agent vm1: vmagent " + buildinfo.String() + " answering on " + d.addr + ":" + onboard.AgentPort,
		"onboard vm1: stays on revision canary (the VMs join default) [RevisionKept vm1 default]",
		"onboard vm1: revision canary, Istio " + istioinstall.EmbeddedVersion + " (its istiod's)",
	}
	if len(lines) != 7 || !slices.Equal(lines[:5], want) || !strings.HasSuffix(lines[5], "sidecar active (restarted)") || lines[6] != "healthy vm1: WorkloadEntry "+d.entry+" Healthy" {
		t.Errorf("lines:\n%s\nwant first:\n%s\nthen the files sent and Healthy", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if string(ms.File("/usr/local/bin/vmagent")) != "vmagent for "+runtime.GOARCH {
		t.Errorf("the agent's binary was not put on the machine")
	}
	// One GetVersion: it says the agent answers, and which one.
	if n := d.vm.agent.Calls()["GetVersion"]; n != 1 {
		t.Errorf("GetVersion called %d times, want 1", n)
	}
}
