package cli

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// TestFleetUpOnLab is fleet mode as a user meets it on the lab, where it
// is on by default: hostctl is the controller's client.
//   - up provisions the machines and agents, declares a MeshVM per VM and
//     waits for their Ready, which the controller (a lab process up
//     started) sets: no fleet adopt; a second up changes nothing;
//   - vm status reads the MeshVMs (READY, -o json's meshvm);
//   - two controller processes, the leader killed mid-rotation of every
//     VM's token: the other takes over, no token left unrotated
//     (leaderKilledMidRotation);
//   - vm renew --force: the controller replaces the token, the sidecar is
//     not restarted;
//   - a second engineer (a config and state directory of their own, no
//     agent CA) runs vm status, verify, doctor, vm logs, vm upgrade, vm
//     renew --force, vm onboard --restart, vm stop and vm start on the
//     same VMs (secondEngineer);
//   - vm revoke: the MeshVM paused, the token refused; vm onboard: a fresh
//     token, Ready again;
//   - vm rm: the MeshVM finalized (token refused, entry gone), the
//     machine deleted;
//   - down: the MeshVMs deleted first, through their finalizers.
func TestFleetUpOnLab(t *testing.T) {
	_, _, cfgPath, state := labSetup(t, "fu1", "fu2")
	if out, err := run(t, "--config", cfgPath, "config", "show", "-o", "json"); err != nil || !strings.Contains(out, `"fleet": {`) || !strings.Contains(out, `"enabled": true`) {
		t.Fatalf("config show: %v; want fleet.enabled true by default on the lab:\n%s", err, out)
	}
	start := time.Now()
	out, err := run(t, "--config", cfgPath, "up", "--timeout", "50m")
	t.Logf("up in fleet mode (%s):\n%s", time.Since(start).Round(time.Second), out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"MeshVM vmns/fu1 created", "controller fu1: Ready", "controller fu2: Ready", "2 VM(s) declared and Ready"} {
		if !strings.Contains(out, want) {
			t.Errorf("up lacks %q", want)
		}
	}
	if strings.Contains(out, "onboard fu1") {
		t.Errorf("up onboarded from the workstation in fleet mode:\n%s", out)
	}
	ctx := context.Background()
	clients, rc, dc := labClients(t, state)
	t.Logf("kubectl get meshvms:\n%s", getTable(t, rc, "vmns"))
	lab := labVMs(state)
	sh := vmShell(t, lab)
	sidecarPID := func(vm string) string { return sh(vm, "systemctl show -p MainPID --value istio.service") }
	get := func(name string) v1alpha1.MeshVM { return getMeshVM(ctx, dc, "vmns", name) }
	token := func(vm string) []byte {
		rec, err := clients.Kube.CoreV1().Secrets(fleetstore.DefaultNamespace).Get(ctx, fleetstore.RecordName("vmns", vm), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s's records: %v", vm, err)
		}
		return rec.Data["istio-token"]
	}
	authenticated := func(tok []byte) bool {
		r, err := workload.Review(ctx, clients.Kube, tok)
		return err == nil && r.Authenticated
	}
	fu1PID, fu2PID := sidecarPID("fu1"), sidecarPID("fu2")

	// A second up: nothing changes, nothing is restarted.
	start = time.Now()
	out, err = run(t, "--config", cfgPath, "up")
	t.Logf("second up (%s):\n%s", time.Since(start).Round(100*time.Millisecond), out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"MeshVM vmns/fu1 unchanged", "MeshVM vmns/fu2 unchanged", "controller already running", "Secret meshvm-system/meshvm-agent-ca unchanged"} {
		if !strings.Contains(out, want) {
			t.Errorf("second up lacks %q", want)
		}
	}
	if now := sidecarPID("fu1"); now != fu1PID {
		t.Errorf("the second up restarted fu1's sidecar (pid %s -> %s)", fu1PID, now)
	}

	// vm status through the MeshVMs.
	out, err = run(t, "--config", cfgPath, "vm", "status")
	logOutput(t, "vm status", out)
	if err != nil || !strings.Contains(out, "READY") || strings.Count(out, " True ") < 2 {
		t.Errorf("vm status: %v, want READY True for both", err)
	}
	out, err = run(t, "--config", cfgPath, "vm", "status", "-o", "json")
	var st []fleet.VMStatus
	if jerr := json.Unmarshal([]byte(jsonPart(out)), &st); err != nil || jerr != nil || len(st) != 2 {
		t.Fatalf("vm status -o json: %v %v\n%s", err, jerr, out)
	}
	for _, s := range st {
		if !s.OK || s.MeshVM == nil || s.MeshVM.Ready != "True" || s.Agent == "" || s.TokenExpiresAt == nil {
			t.Errorf("vm status -o json of %s: %+v", s.Name, s)
		}
	}

	// Two controller processes, the leader killed mid-rotation.
	leaderKilledMidRotation(t, cfgPath, state, "fu1", "fu2")

	// vm renew --force: through the controller, only the token sent.
	before := token("fu1")
	out, err = run(t, "--config", cfgPath, "vm", "renew", "fu1", "--force")
	logOutput(t, "vm renew fu1 --force", out)
	if err != nil || !strings.Contains(out, "token replaced by the controller") {
		t.Errorf("vm renew: %v", err)
	}
	if m := get("fu1"); m.Status.RenewRequest == "" || m.Status.TokenRotatedAt == nil {
		t.Errorf("fu1's renewal not recorded: %+v", m.Status)
	}
	if after := token("fu1"); string(after) == string(before) || !authenticated(after) {
		t.Errorf("fu1's token not replaced with a good one")
	}
	if now := sidecarPID("fu1"); now != fu1PID {
		t.Errorf("vm renew restarted fu1's sidecar (pid %s -> %s)", fu1PID, now)
	}

	// A second engineer, with no state of these VMs, manages them too.
	startCanary := func() {
		t.Helper()
		os.WriteFile(cfgPath, []byte("version: 1\ncluster:\n  provider: lab\nistio:\n  revision: canary\nvms:\n- name: fu1\n- name: fu2\n"), 0o600)
		out, err := run(t, "--config", cfgPath, "up")
		logOutput(t, "up with istio.revision canary", out)
		if err != nil || !strings.Contains(out, "istiod (revision canary) ready") {
			t.Fatalf("up with istio.revision canary: %v", err)
		}
	}
	groupRev := func() (string, bool) {
		wg, err := clients.Istio.NetworkingV1().WorkloadGroups("vmns").Get(ctx, "external-app", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rev, ok := wg.Labels["istio.io/rev"]
		return rev, ok
	}
	secondEngineer(t, state, []string{"fu1", "fu2"}, sidecarPID, token, get, startCanary, groupRev)

	// vm revoke, then vm onboard.
	revoked := token("fu2")
	out, err = run(t, "--config", cfgPath, "vm", "revoke", "fu2")
	logOutput(t, "vm revoke fu2", out)
	if err != nil || !get("fu2").Spec.Paused {
		t.Errorf("vm revoke: %v, paused %v", err, get("fu2").Spec.Paused)
	}
	waitFor(t, 30*time.Second, "fu2's token refused", func() (bool, string) { return !authenticated(revoked), "still authenticated" })
	if out, err := run(t, "--config", cfgPath, "vm", "status", "fu2"); err == nil || !strings.Contains(out, "paused") {
		t.Errorf("vm status of a revoked VM: %v\n%s", err, out)
	}
	out, err = run(t, "--config", cfgPath, "vm", "onboard", "fu2")
	logOutput(t, "vm onboard fu2", out)
	if err != nil || !strings.Contains(out, "re-onboarded by the controller") {
		t.Errorf("vm onboard: %v", err)
	}
	if m := get("fu2"); m.Spec.Paused || m.Status.OnboardRequest == "" || !authenticated(token("fu2")) {
		t.Errorf("fu2 after vm onboard: paused %v, %+v", m.Spec.Paused, m.Status)
	}
	_ = fu2PID

	// vm rm: the MeshVM finalized, then the machine.
	fu1 := get("fu1")
	tok := token("fu1")
	out, err = run(t, "--config", cfgPath, "vm", "rm", "fu1")
	logOutput(t, "vm rm fu1", out)
	if err != nil || !strings.Contains(out, "MeshVM vmns/fu1 deleted") || !strings.Contains(out, "machine fu1 deleted") {
		t.Errorf("vm rm: %v", err)
	}
	if _, found, err := workload.FindEntry(ctx, clients, workload.Spec{Namespace: "vmns", Group: "external-app"}, fu1.Status.Address); found || err != nil {
		t.Errorf("fu1's WorkloadEntry left after vm rm (%v)", err)
	}
	waitFor(t, 30*time.Second, "fu1's token refused", func() (bool, string) { return !authenticated(tok), "still authenticated" })
	if out, err := run(t, "--config", cfgPath, "vm", "rm", "fu1"); err != nil || !strings.Contains(out, "no MeshVM vmns/fu1") {
		t.Errorf("vm rm again: %v, want nothing to do, said\n%s", err, out)
	}

	// down: the MeshVMs first, through their finalizers.
	out, err = run(t, "--config", cfgPath, "down", "--keep-cluster")
	logOutput(t, "down --keep-cluster", out)
	if err != nil {
		t.Fatal(err)
	}
	meshVM, machine := strings.Index(out, "MeshVM vmns/fu2 deleted"), strings.Index(out, "VM fu2 deleted")
	if meshVM < 0 || machine < 0 || meshVM > machine {
		t.Errorf("down: want fu2's MeshVM deleted before its machine")
	}
	if l, err := dc.Resource(fleetmode.MeshVMs).Namespace("vmns").List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) != 0 {
		t.Errorf("MeshVMs left after down: %v", err)
	}
}
