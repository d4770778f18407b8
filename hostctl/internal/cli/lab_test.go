package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	labbuild "github.com/meshvm/meshvm/lab/build"
	labcluster "github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/instance"
	labmachine "github.com/meshvm/meshvm/lab/labmachine"
	"github.com/meshvm/meshvm/lab/mesh"
	"github.com/meshvm/meshvm/lab/procs"
	labvm "github.com/meshvm/meshvm/lab/vm"
	"github.com/meshvm/meshvm/pkg/buildinfo"
	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/envfile"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// TestUpOnLab is the end-to-end proof on real parts: kube-apiserver,
// kube-controller-manager and istiod built from source, a Debian VM booting
// systemd, the real vmagent and pilot-agent (with the lab's Envoy stand-in).
func TestUpOnLab(t *testing.T) {
	root, work, cfgPath, state := labSetup(t, "e2e1")
	fleetOff(t, cfgPath) // the workstation drives the VMs: TestFleetUpOnLab is the fleet path

	out, err := run(t, "--config", cfgPath, "up", "--timeout", "50m")
	logOutput(t, "first up", out)
	if err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "--config", cfgPath, "up")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"rendered from the embedded charts (Istio 1.31.0): 0 created, 0 configured", "WorkloadGroup vmns/external-app unchanged", "nothing sent", "Healthy"} {
		if !strings.Contains(out, want) {
			t.Errorf("second up lacks %q:\n%s", want, out)
		}
	}

	out, err = run(t, "--config", cfgPath, "vm", "status", "-o", "json")
	if err != nil {
		t.Fatalf("vm status: %v\n%s", err, out)
	}
	var status []fleet.VMStatus
	if err := json.Unmarshal([]byte(out), &status); err != nil {
		t.Fatalf("vm status -o json: %v\n%s", err, out)
	}
	if s := status[0]; !s.OK || s.Healthy != "True" || s.Sidecar != "active/running" || s.IstiodDNS == "" || s.App != "HTTP 200" || s.CertExpiry == "" {
		t.Errorf("vm status: got %+v, want a healthy, onboarded VM", s)
	}
	if c := status[0].Capture; c == nil || c.State != fleet.CaptureOK || len(c.Backends) != 1 || c.Validation == nil || !c.Validation.Passed {
		t.Errorf("vm status: got capture %+v, want ok in one backend with Istio's validation passed", c)
	}

	out, err = run(t, "--config", cfgPath, "verify")
	if err != nil || !regexp.MustCompile(`istiod resolves on the VM\s+ok\s`).MatchString(out) || strings.Count(out, "skipped") != 2 || !strings.Contains(out, "no Envoy data path") {
		t.Errorf("verify: got %v\n%s\nwant istiod resolved and both traffic checks said to be impossible here", err, out)
	}
	out, err = run(t, "--config", cfgPath, "verify", "-o", "json")
	var verdicts []fleet.Verdict
	if jerr := json.Unmarshal([]byte(out), &verdicts); err != nil || jerr != nil || len(verdicts) != 4 ||
		verdicts[0].Result != "ok" || verdicts[1].Result != "skipped" || verdicts[2].Result != "skipped" ||
		verdicts[3].Check != "capture rules" || verdicts[3].Result != "ok" {
		t.Errorf("verify -o json: %v %v\n%s", err, jerr, out)
	}

	cfg, err := config.Load(cfgPath, true, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(state, "lab", "cluster", "kubeconfig")
	clients, err := fleet.KubeClients(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{{"cluster", "status", "-o", "json"}, {"istio", "status", "-o", "json"}} {
		out, err := run(t, append([]string{"--config", cfgPath}, args...)...)
		var comps []fleet.Component
		if jerr := json.Unmarshal([]byte(out), &comps); err != nil || jerr != nil || len(comps) < 3 {
			t.Errorf("%v: %v %v\n%s", args, err, jerr, out)
		}
	}
	if out, err := run(t, "--config", cfgPath, "cluster", "status"); err != nil || !strings.Contains(out, instance.Of(filepath.Join(state, "lab")).String()+": API server 127.0.0.1:") {
		t.Errorf("cluster status names no lab instance: %v\n%s", err, out)
	}
	if out, err := run(t, "--config", cfgPath, "istio", "status"); err != nil || !strings.Contains(out, "0 missing") {
		t.Errorf("istio status: %v\n%s", err, out)
	}
	if out, err := run(t, "--config", cfgPath, "cluster", "kubeconfig"); err != nil || !strings.Contains(out, "server: "+labcluster.Server(filepath.Join(state, "lab", "cluster"))) {
		t.Errorf("cluster kubeconfig: %v\n%s", err, out)
	}

	// doctor: all clear, then a LoadBalancer holding the east-west ports is named with its fix.
	out, err = run(t, "--config", cfgPath, "doctor", "-o", "json")
	var findings []fleet.Finding
	if jerr := json.Unmarshal([]byte(out), &findings); err != nil || jerr != nil {
		t.Fatalf("doctor on a healthy lab: %v %v\n%s", err, jerr, out)
	}
	for _, f := range findings {
		if f.Result != "ok" {
			t.Errorf("doctor on a healthy lab: %+v", f)
		}
	}
	lb := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "istio-ingressgateway", Namespace: "istio-system"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Name: "status-port", Port: 15021}}}}
	if _, err := clients.Kube.CoreV1().Services("istio-system").Create(context.Background(), lb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "--config", cfgPath, "doctor")
	if err == nil || !strings.Contains(out, "istio-system/istio-ingressgateway holds 15021") || !strings.Contains(out, "delete that LoadBalancer") {
		t.Errorf("doctor with the default ingress gateway in the way: %v\n%s", err, out)
	}
	clients.Kube.CoreV1().Services("istio-system").Delete(context.Background(), "istio-ingressgateway", metav1.DeleteOptions{})
	lab := labVMs(state)
	m, err := lab.Info(context.Background(), "e2e1")
	if err != nil {
		t.Fatal(err)
	}
	spec := fleet.WorkloadSpec(cfg)
	ctx := context.Background()
	inVM(t, ctx, lab, state, m, spec, clients)

	// Health follows the app: stop it, the entry turns unhealthy; start it, back.
	if _, err := lab.Exec(ctx, "e2e1", nil, "systemctl", "stop", "meshvm-app"); err != nil {
		t.Fatal(err)
	}
	waitEntry(t, clients, spec, m.Addresses[0], "False")
	if out, err := run(t, "--config", cfgPath, "vm", "status"); err == nil || !strings.Contains(err.Error(), "is the app answering on port 8000") {
		t.Errorf("vm status with the app down: got %v\n%s\nwant a non-zero exit naming the next step", err, out)
	}
	if _, err := lab.Exec(ctx, "e2e1", nil, "systemctl", "start", "meshvm-app"); err != nil {
		t.Fatal(err)
	}
	waitEntry(t, clients, spec, m.Addresses[0], "True")

	// Where the kernel sends connections, and the verdict on rules left in both backends.
	captureOnLab(t, ctx, cfgPath, lab, "e2e1")

	// The files agree with istioctl's own, built from the same module, against the same cluster.
	src := filepath.Join(root, "lab", "toolchain")
	bins, err := labbuild.Build(ctx, labbuild.Options{ModuleDir: src, CacheDir: labbuild.DefaultCacheDir()})
	if err != nil {
		t.Fatal(err)
	}
	istiodIP := lab.IstiodAddress()
	ref := filepath.Join(work, "istioctl-files")
	cmd := exec.Command(bins.Path("istioctl"), "x", "workload", "entry", "configure", "--kubeconfig", kubeconfig,
		"-n", "vmns", "--name", "external-app", "--clusterID", "test", "--autoregister", "--externalIP", m.Addresses[0],
		"--ingressIP", istiodIP, "-o", ref)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("istioctl: %v\n%s", err, out)
	}
	ours := filepath.Join(state, "vms", "e2e1", "files")
	// Deliberately beyond istioctl's: the proxy's labels carry the VM's
	// name, so the entry istiod registers names its VM (address following).
	vmLabel := 0
	read := func(dir, name string) []byte {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		if dir != ours {
			return b
		}
		for _, l := range []string{`"` + workloadfiles.VMLabel + `":"e2e1",`, `\"` + workloadfiles.VMLabel + `\":\"e2e1\",`} {
			vmLabel += bytes.Count(b, []byte(l))
			b = bytes.ReplaceAll(b, []byte(l), nil)
		}
		return b
	}
	env := func(b []byte) map[string]string {
		m := map[string]string{}
		envfile.Parse("cluster.env", b, m)
		return m
	}
	theirEnv := env(read(ref, "cluster.env"))
	for k, v := range workloadfiles.TokenOnly() { // deliberately beyond istioctl's
		theirEnv[k] = v
	}
	if diff := cmp.Diff(theirEnv, env(read(ours, "cluster.env"))); diff != "" {
		t.Errorf("cluster.env (-istioctl +meshvm):\n%s", diff)
	}
	for _, f := range []string{"mesh.yaml", "hosts", "root-cert.pem"} {
		if diff := cmp.Diff(string(read(ref, f)), string(read(ours, f))); diff != "" {
			t.Errorf("%s (-istioctl +meshvm):\n%s", f, diff)
		}
	}
	if vmLabel == 0 {
		t.Errorf("our files do not label the proxy %s=e2e1", workloadfiles.VMLabel)
	}
	theirs, _ := credinfo.ParseToken(read(ref, "istio-token"))
	mine, _ := credinfo.ParseToken(read(ours, "istio-token"))
	if theirs.Subject != mine.Subject || strings.Join(theirs.Audiences, ",") != strings.Join(mine.Audiences, ",") {
		t.Errorf("token claims differ: istioctl %+v, meshvm %+v", theirs, mine)
	}
	// Deliberately better: secrets 0600, where istioctl writes 0744.
	for _, f := range []string{"istio-token", "cluster.env"} {
		if st, _ := os.Stat(filepath.Join(ours, f)); st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, st.Mode())
		}
	}

	onboardAgainAndFaults(t, cfgPath, state, lab, clients, spec)
	agentRemoved(t, ctx, lab, state, "e2e1")
}

// agentRemoved removes the agent as down does from a machine that is not
// ours (SSH), and checks that the VM is left as it was before up.
func agentRemoved(t *testing.T, ctx context.Context, lab *labmachine.Provider, state, vm string) {
	t.Helper()
	m, err := lab.Info(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := onboard.RemoveAgent(ctx, onboard.Deps{Provider: lab, State: mustState(t, state)}, m); err != nil {
		t.Fatal(err)
	}
	out, _ := lab.Exec(ctx, vm, nil, "sh", "-c", "id istio-proxy; ls /etc/meshvm /var/lib/meshvm /usr/local/bin/vmagent /usr/local/bin/pilot-agent; "+
		"systemctl is-active vmagent.service istio.service; grep -c meshvm /etc/hosts")
	for _, want := range []string{"no such user", "'/etc/meshvm': No such file", "'/var/lib/meshvm': No such file", "'/usr/local/bin/vmagent': No such file",
		"'/usr/local/bin/pilot-agent': No such file", "inactive\ninactive", "\n0"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("after the agent was removed, want %q in:\n%s", want, out)
		}
	}
}

// inVM checks what onboarding left inside the VM and in the cluster: the
// postinst's user, group, modes, hosts block and unit; a workload
// certificate with the service account's SPIFFE identity; the entry istiod
// registered, named after the group, the address and the network.
func inVM(t *testing.T, ctx context.Context, lab *labmachine.Provider, state string, m machine.Machine, spec workload.Spec, clients workload.Clients) {
	t.Helper()
	sh := func(cmd string) string {
		out, err := lab.Exec(ctx, m.Name, nil, "sh", "-c", cmd)
		if err != nil {
			t.Errorf("%s: %v: %s", cmd, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := sh("id -un istio-proxy && id -gn istio-proxy"); got != "istio-proxy\nistio-proxy" {
		t.Errorf("istio-proxy user and group: %q", got)
	}
	want := map[string]string{
		"/var/run/secrets/tokens/istio-token": "600 istio-proxy:istio-proxy",
		"/etc/certs":                          "750 istio-proxy:istio-proxy",
		"/usr/local/bin/pilot-agent":          "2755 root:istio-proxy",
		"/usr/local/bin/envoy":                "2755 root:istio-proxy",
	}
	for path, mode := range want {
		if got := sh("stat -L -c '%a %U:%G' " + path); got != mode {
			t.Errorf("%s: %s, want %s", path, got, mode)
		}
	}
	// The lab's one istiod address, not the VM's own link: it stays when the VM moves.
	istiodIP := lab.IstiodAddress()
	if hosts := sh("cat /etc/hosts"); !regexp.MustCompile(regexp.QuoteMeta(istiodIP) + `\s+istiod\.istio-system\.svc`).MatchString(hosts) {
		t.Errorf("/etc/hosts lacks istiod at %s:\n%s", istiodIP, hosts)
	}
	if got := sh("systemctl is-enabled istio.service vmagent.service"); got != "enabled\nenabled" {
		t.Errorf("units: %q, want both enabled", got)
	}
	c, err := onboard.Dial(mustState(t, state), m.Addresses[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := "spiffe://cluster.local/ns/" + spec.Namespace + "/sa/" + spec.ServiceAccount
	if sans := st.GetWorkloadCertificate().GetUriSans(); !slices.Contains(sans, id) {
		t.Errorf("workload certificate SANs %v, want %s", sans, id)
	}
	e, ok, err := workload.FindEntry(ctx, clients, spec, m.Addresses[0])
	wantName := spec.Group + "-" + m.Addresses[0] + "-" + spec.Network
	if err != nil || !ok || e.Name != wantName || e.Network != spec.Network {
		t.Errorf("WorkloadEntry %+v (%v), want %s on network %s", e, err, wantName, spec.Network)
	}
}

// labSetup builds the agent, writes a lab config listing vms, and has the
// test end with hostctl down, checked to leave nothing behind.
func labSetup(t *testing.T, vms ...string) (root, work, cfgPath, state string) {
	t.Helper()
	if os.Getenv("MESHVM_LAB") == "" || os.Getenv("MESHVM_LAB_BUILD") == "" {
		t.Skip("set MESHVM_LAB=1 and MESHVM_LAB_BUILD=1 to run hostctl up on the lab")
	}
	root, _ = filepath.Abs("../../..")
	work = t.TempDir()
	// The agent and this in-process hostctl carry one version, as a release does.
	buildinfo.Version = "e2e"
	build := exec.Command("go", "build", "-tags", buildinfo.AgentTags, "-ldflags", "-X github.com/meshvm/meshvm/pkg/buildinfo.Version=e2e",
		"-o", filepath.Join(work, "vmagent-linux-"+runtime.GOARCH), "./vmagent")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build vmagent: %v\n%s", err, out)
	}
	t.Setenv("MESHVM_AGENT_DIR", work)
	t.Setenv("MESHVM_SOURCE", root)
	cfgPath = filepath.Join(work, "meshvm.yaml")
	writeLabConfig(t, cfgPath, vms...)
	state = filepath.Join(work, ".meshvm")
	t.Cleanup(func() {
		cfg, _ := config.Load(cfgPath, true, func(string) string { return "" })
		inst := instance.Of(filepath.Join(state, "lab"))
		if _, err := run(t, "--config", cfgPath, "down"); err != nil {
			t.Errorf("down: %v", err)
		}
		for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
			if _, ok := procs.Dir(filepath.Join(state, "lab", "cluster")).Running(name); ok {
				t.Errorf("%s still running after down", name)
			}
		}
		for _, vm := range cfg.VMs {
			if _, err := os.Stat("/run/netns/" + labvm.NetNS(labvm.Spec{Name: vm.Name, Tag: inst.Names()})); err == nil {
				t.Errorf("the network namespace of %s is left after down", vm.Name)
			}
		}
		if _, err := os.Stat(filepath.Join(state, "lab")); err == nil {
			t.Error("the lab's state is left after down")
		}
		// A VM booted under names down does not know (another instance's)
		// outlives its netns: its nspawn is what would be left.
		if out, err := exec.Command("pgrep", "-af", "systemd-nspawn .*-D "+filepath.Join(state, "lab", "vms")+"/").Output(); err == nil {
			t.Errorf("VMs still running after down:\n%s", out)
		}
	})
	return root, work, cfgPath, state
}

func writeLabConfig(t *testing.T, path string, vms ...string) {
	t.Helper()
	cfg := "version: 1\ncluster:\n  provider: lab\nvms:\n"
	for _, vm := range vms {
		cfg += "- name: " + vm + "\n"
	}
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestManyVMsOnLab onboards two lab VMs at once, then ten; a VM that cannot
// be created fails by name without stopping the others.
func TestManyVMsOnLab(t *testing.T) {
	_, _, cfgPath, state := labSetup(t, "m1", "m2", "m-too-long-name")
	fleetOff(t, cfgPath)
	out, err := run(t, "--config", cfgPath, "up", "--timeout", "50m")
	logOutput(t, "up with two good VMs and a bad one", out)
	if err == nil || !strings.Contains(err.Error(), "m-too-long-name: ") || !strings.Contains(err.Error(), "use at most 10") {
		t.Fatalf("got %v, want the bad VM's failure by name", err)
	}
	if strings.Count(out, "Healthy (") != 2 {
		t.Errorf("want the two good VMs Healthy despite the bad one; got %v", err)
	}

	var ten []string
	for i := 1; i <= 10; i++ {
		ten = append(ten, fmt.Sprintf("m%d", i))
	}
	writeLabConfig(t, cfgPath, ten...)
	fleetOff(t, cfgPath)
	out, err = run(t, "--config", cfgPath, "up")
	logOutput(t, "up with ten VMs", out)
	if err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "--config", cfgPath, "vm", "status", "-o", "json")
	var status []fleet.VMStatus
	if jerr := json.Unmarshal([]byte(out), &status); err != nil || jerr != nil {
		t.Fatalf("vm status: %v %v\n%s", err, jerr, out)
	}
	addrs := map[string]bool{}
	for _, s := range status {
		if !s.OK || s.Healthy != "True" {
			t.Errorf("%s: %+v", s.Name, s)
		}
		addrs[s.Address] = true
	}
	if len(status) != 10 || len(addrs) != 10 {
		t.Errorf("want 10 VMs at 10 addresses, got %d at %d", len(status), len(addrs))
	}

	m10 := status[9]
	out, err = run(t, "--config", cfgPath, "vm", "rm", "m10")
	if err != nil || !strings.Contains(out, "WorkloadEntry "+m10.WorkloadEntry+" deleted") || !strings.Contains(out, "m10 taken off") {
		t.Errorf("vm rm: %v\n%s", err, out)
	}
	if cfg, err := config.Load(cfgPath, true, func(string) string { return "" }); err != nil || len(cfg.VMs) != 9 {
		t.Errorf("config after vm rm: %d VMs, %v", len(cfg.VMs), err)
	}
	revisions(t, cfgPath, state, ten[:9])
}

// revisions runs a second revision's istiod beside the default one and
// moves VMs to it and back: the WorkloadEntry of a moved VM is registered
// by the new revision's istiod, the others stay where they are, and the
// WorkloadGroup carries istio.io/rev only while all VMs share one.
func revisions(t *testing.T, cfgPath, state string, vms []string) {
	ctx := context.Background()
	clients, err := fleet.KubeClients(filepath.Join(state, "lab", "cluster", "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	groupRev := func() (string, bool) {
		wg, err := clients.Istio.NetworkingV1().WorkloadGroups("vmns").Get(ctx, "external-app", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rev, ok := wg.Labels["istio.io/rev"]
		return rev, ok
	}
	statusOf := func() map[string]fleet.VMStatus {
		t.Helper()
		out, err := run(t, "--config", cfgPath, "vm", "status", "-o", "json")
		var list []fleet.VMStatus
		if jerr := json.Unmarshal([]byte(out), &list); err != nil || jerr != nil {
			t.Fatalf("vm status: %v %v\n%s", err, jerr, out)
		}
		by := map[string]fleet.VMStatus{}
		for _, s := range list {
			by[s.Name] = s
		}
		return by
	}
	if rev, ok := groupRev(); !ok || rev != "default" {
		t.Errorf("WorkloadGroup istio.io/rev %q (set %v) with every VM on the default revision, want default", rev, ok)
	}
	if out, err := run(t, "--config", cfgPath, "vm", "upgrade", vms[0], "--revision", "canary"); err == nil || !strings.Contains(err.Error(), "istiod of revision canary is not ready") {
		t.Errorf("vm upgrade to a revision that does not run: %v\n%s", err, out)
	}

	cfg := "version: 1\ncluster:\n  provider: lab\nistio:\n  revision: canary\nvms:\n"
	for _, vm := range vms {
		cfg += "- name: " + vm + "\n"
	}
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	fleetOff(t, cfgPath) // vm upgrade is the workstation's path
	out, err := run(t, "--config", cfgPath, "up")
	logOutput(t, "up with istio.revision canary", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "istiod (revision canary) ready") || !strings.Contains(out, "stays on revision default (the VMs join canary): hostctl vm upgrade "+vms[0]+" --revision canary") {
		t.Errorf("up with a new revision should start its istiod and move no VM")
	}

	out, err = run(t, "--config", cfgPath, "vm", "upgrade", vms[0], vms[1], "--revision", "canary")
	logOutput(t, "vm upgrade to canary", out)
	if err != nil {
		t.Fatal(err)
	}
	by := statusOf()
	for _, vm := range vms[:2] {
		if s := by[vm]; s.Revision != "canary" || s.IstiodController != "istiod-canary-lab" || !s.OK {
			t.Errorf("%s after the move: revision %s, registered by %q, ok %v (%s); want canary, istiod-canary-lab", vm, s.Revision, s.IstiodController, s.OK, s.Next)
		}
	}
	if s := by[vms[2]]; s.Revision != "default" || s.IstiodController != "istiod-lab" || !s.OK {
		t.Errorf("%s, not moved: revision %s, registered by %q, ok %v; want default, istiod-lab", vms[2], s.Revision, s.IstiodController, s.OK)
	}
	if rev, ok := groupRev(); ok {
		t.Errorf("WorkloadGroup labelled istio.io/rev %s while VMs are split between revisions", rev)
	}
	if out, err := run(t, "--config", cfgPath, "doctor"); err != nil || !strings.Contains(out, "istiod-canary.istio-system.svc -> ") {
		t.Errorf("doctor with VMs on two revisions: %v\n%s", err, out)
	}

	out, err = run(t, "--config", cfgPath, "vm", "upgrade", vms[0], "--revision", "default")
	logOutput(t, "vm upgrade back to default", out)
	if err != nil || !strings.Contains(out, "moved from canary") {
		t.Fatalf("back to default: %v", err)
	}
	if s := statusOf()[vms[0]]; s.Revision != "default" || s.IstiodController != "istiod-lab" || !s.OK {
		t.Errorf("%s moved back: revision %s, registered by %q, ok %v; want default, istiod-lab", vms[0], s.Revision, s.IstiodController, s.OK)
	}

	// A VM that does not come back in time stops the upgrade there, and
	// the command it names moves it back.
	out, err = run(t, "--config", cfgPath, "vm", "upgrade", vms[2], vms[3], "--revision", "canary", "--timeout", "4s")
	logOutput(t, "vm upgrade that times out", out)
	rollback := "roll it back with hostctl vm upgrade " + vms[2] + " --revision default"
	if err == nil || !strings.Contains(err.Error(), "did not come back on revision canary") || !strings.Contains(err.Error(), rollback) {
		t.Fatalf("vm upgrade past its timeout: %v, want the VM named with its rollback", err)
	}
	if strings.Contains(out, "onboard "+vms[3]) {
		t.Errorf("vm upgrade went on to %s after %s did not come back", vms[3], vms[2])
	}
	if out, err := run(t, "--config", cfgPath, "vm", "upgrade", vms[2], "--revision", "default"); err != nil {
		t.Errorf("the rollback it named: %v\n%s", err, out)
	}
	by = statusOf()
	for _, vm := range vms[2:4] {
		if s := by[vm]; s.Revision != "default" || s.IstiodController != "istiod-lab" || !s.OK {
			t.Errorf("%s after the rollback: revision %s, registered by %q, ok %v (%s); want default, istiod-lab", vm, s.Revision, s.IstiodController, s.OK, s.Next)
		}
	}
}

// onboardAgainAndFaults is the life of an onboarded VM: re-onboarding after
// the token is lost, the agent killed mid-transfer, a reboot, an istiod
// restart, and a new address.
func onboardAgainAndFaults(t *testing.T, cfgPath, state string, lab *labmachine.Provider, clients workload.Clients, spec workload.Spec) {
	ctx := context.Background()
	const vm = "e2e1"
	m, _ := lab.Info(ctx, vm)
	addr := m.Addresses[0]
	vmFile := func(p string) string {
		out, _ := lab.Exec(ctx, vm, nil, "sh", "-c", "sha256sum "+p+" 2>/dev/null | cut -c1-64")
		return strings.TrimSpace(string(out))
	}

	t.Run("onboard after the token is lost and the sidecar stopped", func(t *testing.T) {
		oldToken := vmFile("/var/run/secrets/tokens/istio-token")
		if out, err := lab.Exec(ctx, vm, nil, "sh", "-c", "systemctl stop istio && rm /var/run/secrets/tokens/istio-token"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if out, err := run(t, "--config", cfgPath, "vm", "status", vm); err == nil || !strings.Contains(err.Error(), "hostctl vm onboard "+vm) {
			t.Errorf("vm status with the sidecar stopped: got %v\n%s\nwant a non-zero exit naming vm onboard", err, out)
		}
		out, err := run(t, "--config", cfgPath, "vm", "onboard", vm)
		logOutput(t, "vm onboard", out)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "sent /var/run/secrets/tokens/istio-token") || strings.Contains(out, "/usr/local/bin/") {
			t.Errorf("vm onboard should send the token and not the unchanged binaries:\n%s", out)
		}
		if tok := vmFile("/var/run/secrets/tokens/istio-token"); tok == "" || tok == oldToken {
			t.Errorf("token on the VM: %q, want a fresh one (old %s)", tok, oldToken)
		}
		waitEntry(t, clients, spec, addr, "True")
	})

	t.Run("onboard a healthy VM: a new token does not restart the sidecar unless asked", func(t *testing.T) {
		pid := func() string {
			out, _ := lab.Exec(ctx, vm, nil, "systemctl", "show", "-p", "MainPID", "--value", "istio.service")
			return strings.TrimSpace(string(out))
		}
		before := pid()
		out, err := run(t, "--config", cfgPath, "vm", "onboard", vm)
		if err != nil || strings.Contains(out, "(restarted)") || pid() != before {
			t.Errorf("vm onboard: %v, pid %s -> %s\n%s\nwant the running sidecar kept", err, before, pid(), out)
		}
		out, err = run(t, "--config", cfgPath, "vm", "onboard", "--restart", vm)
		if err != nil || !strings.Contains(out, "(restarted)") || pid() == before {
			t.Errorf("vm onboard --restart: %v, pid %s -> %s\n%s\nwant a restarted sidecar, Healthy again", err, before, pid(), out)
		}
	})

	t.Run("agent killed mid-transfer", func(t *testing.T) {
		const target = "/usr/local/bin/envoy"
		before := vmFile(target)
		ac, err := onboard.Dial(mustState(t, state), addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ac.Close()
		release := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := ac.PutFile(ctx, agentclient.File{Path: target, SHA256: strings.Repeat("ab", 32), Size: 64 << 20,
				Open: func() (io.ReadCloser, error) { return io.NopCloser(&stalling{left: 8 << 20, release: release}), nil }})
			done <- err
		}()
		// Mid-transfer: the agent's temporary file exists beside the target.
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(vmLs(ctx, lab, vm), ".meshvm-tmp-") {
			if time.Now().After(deadline) {
				t.Fatalf("no transfer in progress after 30s: %s", vmLs(ctx, lab, vm))
			}
			time.Sleep(100 * time.Millisecond)
		}
		if out, err := lab.Exec(ctx, vm, nil, "systemctl", "kill", "--signal=KILL", "vmagent.service"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		close(release)
		if err := <-done; err == nil {
			t.Fatal("PutFile succeeded although the agent was killed")
		}
		// systemd restarts the agent, which removes what the dead one left.
		c, err := onboard.Connect(ctx, mustState(t, state), m)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if ls := vmLs(ctx, lab, vm); strings.Contains(ls, ".meshvm-tmp-") {
			t.Errorf("partial file left after the agent came back:\n%s", ls)
		}
		if after := vmFile(target); after != before {
			t.Errorf("%s changed by a cut transfer: %s, was %s", target, after, before)
		}
		out, err := run(t, "--config", cfgPath, "up")
		if err != nil || !strings.Contains(out, "Healthy") {
			t.Fatalf("up after the agent was killed: %v\n%s", err, out)
		}
	})

	t.Run("reboot comes back Healthy with no action", func(t *testing.T) {
		e, _, _ := workload.FindEntry(ctx, clients, spec, addr)
		if out, err := run(t, "--config", cfgPath, "vm", "stop", vm); err != nil {
			t.Fatalf("vm stop: %v\n%s", err, out)
		}
		if _, err := lab.Launch(ctx, machine.Spec{Name: vm}); err != nil {
			t.Fatal(err)
		}
		waitReconnected(t, clients, spec, addr, e.ConnectedAt)
		out, err := run(t, "--config", cfgPath, "vm", "start", vm)
		if err != nil || !strings.Contains(out, "Healthy") {
			t.Errorf("vm start on a running VM: %v\n%s", err, out)
		}
		if out, err := run(t, "--config", cfgPath, "vm", "logs", vm, "--tail", "20"); err != nil || !strings.Contains(out, "istio") {
			t.Errorf("vm logs: %v\n%s", err, out)
		}
	})

	t.Run("istiod restarted", func(t *testing.T) {
		e, _, _ := workload.FindEntry(ctx, clients, spec, addr)
		istio := filepath.Join(state, "lab", "istio")
		if err := mesh.Down(ctx, istio); err != nil {
			t.Fatal(err)
		}
		if out, err := run(t, "--config", cfgPath, "istio", "status"); err == nil || !strings.Contains(err.Error(), "istiod not ready") {
			t.Errorf("istio status with istiod stopped: %v\n%s", err, out)
		}
		// istio install starts it again; the VM's proxy reconnects by itself.
		if out, err := run(t, "--config", cfgPath, "istio", "install"); err != nil {
			t.Fatalf("istio install: %v\n%s", err, out)
		}
		waitReconnected(t, clients, spec, addr, e.ConnectedAt)
	})

	t.Run("address changed", func(t *testing.T) {
		// istiod down while the VM moves: nobody sees the old connection end,
		// so only up can clear the old entry.
		if err := mesh.Down(ctx, filepath.Join(state, "lab", "istio")); err != nil {
			t.Fatal(err)
		}
		if out, err := run(t, "--config", cfgPath, "vm", "stop", vm); err != nil {
			t.Fatalf("vm stop: %v\n%s", err, out)
		}
		if err := lab.Renumber(ctx, vm); err != nil {
			t.Fatal(err)
		}
		out, err := run(t, "--config", cfgPath, "up")
		logOutput(t, "up after the address changed", out)
		if err != nil {
			t.Fatal(err)
		}
		moved, _ := lab.Info(ctx, vm)
		if moved.Addresses[0] == addr {
			t.Fatalf("the VM kept %s", addr)
		}
		if e, ok, err := workload.FindEntry(ctx, clients, spec, addr); err != nil || ok {
			t.Errorf("stale WorkloadEntry at the old address %s: %+v (%v)", addr, e, err)
		}
		if !strings.Contains(out, "stale WorkloadEntry") {
			t.Errorf("up did not say it removed the stale entry:\n%s", out)
		}
		waitEntry(t, clients, spec, moved.Addresses[0], "True")
	})
}

// stalling yields left bytes, then blocks until release closes, then fails.
type stalling struct {
	left    int
	release chan struct{}
}

func (s *stalling) Read(b []byte) (int, error) {
	if s.left > 0 {
		n := min(len(b), s.left)
		s.left -= n
		return n, nil
	}
	<-s.release
	return 0, errors.New("transfer abandoned")
}

func vmLs(ctx context.Context, lab *labmachine.Provider, vm string) string {
	out, _ := lab.Exec(ctx, vm, nil, "ls", "-a", "/usr/local/bin")
	return string(out)
}

func mustState(t *testing.T, dir string) *statedir.Dir {
	t.Helper()
	s, err := statedir.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitReconnected waits for the entry to be Healthy over a new connection.
func waitReconnected(t *testing.T, c workload.Clients, s workload.Spec, addr, before string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		e, ok, err := workload.FindEntry(context.Background(), c, s, addr)
		if err == nil && ok && e.Healthy == "True" && e.ConnectedAt != before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("WorkloadEntry for %s not Healthy over a new connection (connected at %q before; last: %+v, %v)", addr, before, e, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func waitEntry(t *testing.T, c workload.Clients, s workload.Spec, addr, healthy string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		e, ok, err := workload.FindEntry(context.Background(), c, s, addr)
		if err == nil && ok && e.Healthy == healthy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("WorkloadEntry for %s never became Healthy=%s (last: %+v, %v)", addr, healthy, e, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
