package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/host/fleet"
)

// secondEngineer runs, in a fleet-mode lab, what a second engineer runs:
// a config and state directory of their own, with the same cluster and
// machines (the lab's directory, which stands for the cluster and the
// machine host here) and none of the first workstation's state (no agent
// CA, no VM records). Each command reads the cluster's store and acts
// through the controller: they see the same VMs, and no agent CA is minted
// on their workstation. sidecarPID reads a VM's sidecar's pid; token its
// token in the cluster's records; get its MeshVM; startCanary has the
// first engineer run a canary revision's istiod; groupRev reads the
// WorkloadGroup's istio.io/rev.
func secondEngineer(t *testing.T, state string, vms []string, sidecarPID func(string) string, token func(string) []byte, get func(string) v1alpha1.MeshVM,
	startCanary func(), groupRev func() (string, bool)) {
	t.Helper()
	begun := time.Now()
	work := t.TempDir()
	state2 := filepath.Join(work, ".meshvm")
	if err := os.MkdirAll(state2, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(state, "lab"), filepath.Join(state2, "lab")); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(work, "meshvm.yaml")
	writeLabConfig(t, cfgPath, vms...)
	b, _ := os.ReadFile(cfgPath)
	if err := os.WriteFile(cfgPath, []byte("stateDir: "+state2+"\n"+string(b)), 0o600); err != nil {
		t.Fatal(err)
	}
	two := func(args ...string) (string, error) {
		t.Helper()
		out, err := run(t, append([]string{"--config", cfgPath}, args...)...)
		logOutput(t, fmt.Sprintf("second engineer: hostctl %s (%v)", strings.Join(args, " "), err), out)
		return out, err
	}

	// vm status: the same VMs, Ready, their agents reached with the
	// cluster's CA.
	out, err := two("vm", "status", "-o", "json")
	var st []fleet.VMStatus
	if jerr := json.Unmarshal([]byte(jsonPart(out)), &st); err != nil || jerr != nil || len(st) != len(vms) {
		t.Fatalf("vm status -o json: %v %v", err, jerr)
	}
	for _, s := range st {
		if !s.OK || s.MeshVM == nil || s.MeshVM.Ready != "True" || !strings.HasPrefix(s.Agent, "up ") || s.TokenExpiresAt == nil {
			t.Errorf("second engineer's vm status of %s: %+v", s.Name, s)
		}
	}
	if _, err := os.Stat(filepath.Join(state2, "agent-ca", "ca-key.pem")); err == nil {
		t.Error("the second engineer's state directory holds an agent CA: status minted or copied one")
	}

	// verify: istiod resolves on every VM (traffic is skipped on the lab).
	out, err = two("verify", "-o", "json")
	var verdicts []verdictRow
	if jerr := json.Unmarshal([]byte(jsonPart(out)), &verdicts); err != nil || jerr != nil {
		t.Errorf("verify -o json: %v %v", err, jerr)
	}
	resolved := 0
	for _, v := range verdicts {
		if v.Result == "FAIL" {
			t.Errorf("verify: %+v", v)
		}
		if v.Check == "istiod resolves on the VM" && v.Result == string(fleet.OK) {
			resolved++
		}
	}
	if resolved != len(vms) {
		t.Errorf("verify: istiod resolves on %d VM(s), want %d", resolved, len(vms))
	}

	// doctor: the store read from the cluster, each VM's address, hosts
	// block (from its record) and agent checked.
	out, _ = two("doctor", "-o", "json")
	var findings []fleet.Finding
	if err := json.Unmarshal([]byte(jsonPart(out)), &findings); err != nil {
		t.Fatalf("doctor -o json: %v", err)
	}
	seen := map[string]fleet.Result{}
	for _, f := range findings {
		seen[f.Scope+" "+f.Check] = f.Result
		if f.Result == fleet.Fail && f.Scope != "cluster" {
			t.Errorf("doctor: %+v", f)
		}
	}
	if seen["cluster fleet store"] != fleet.OK {
		t.Errorf("doctor: fleet store %q, want ok", seen["cluster fleet store"])
	}
	for _, vm := range vms {
		if seen[vm+" address"] != fleet.OK || seen[vm+" agent"] != fleet.OK || seen[vm+" credentials"] == "" {
			t.Errorf("doctor on %s: address %q, agent %q, credentials %q", vm, seen[vm+" address"], seen[vm+" agent"], seen[vm+" credentials"])
		}
		if _, checked := seen[vm+" hosts file"]; checked {
			t.Errorf("doctor on %s: the hosts block in its record is missing", vm)
		}
	}

	// vm logs: through the agent.
	if out, err := two("vm", "logs", vms[0], "--tail", "5"); err != nil || strings.TrimSpace(out) == "" {
		t.Errorf("vm logs: %v, %q", err, out)
	}

	// vm upgrade: to a revision with no istiod, refused before any MeshVM
	// changes, naming the fix; to the one they are on, nothing moves.
	if out, err := two("vm", "upgrade", "--revision", "canary"); err == nil || !strings.Contains(out+err.Error(), "istiod of revision canary is not ready") || get(vms[0]).Spec.Revision != "" {
		t.Errorf("vm upgrade to a revision that does not run: %v; spec.revision %q", err, get(vms[0]).Spec.Revision)
	}
	if out, err := two("vm", "upgrade", "--revision", "default"); err != nil || !strings.Contains(out, "already declared on revision default") || !strings.Contains(out, "0 VM(s) on revision default") {
		t.Errorf("vm upgrade to the revision they are on: %v", err)
	}

	// A revision that runs: the controller moves the VM there and back,
	// the WorkloadGroup unlabelled while the VMs are split.
	startCanary()
	pid := sidecarPID(vms[0])
	if out, err := two("vm", "upgrade", vms[0], "--revision", "canary"); err != nil || !strings.Contains(out, "1 VM(s) on revision canary") {
		t.Errorf("vm upgrade to canary: %v", err)
	}
	if m := get(vms[0]); m.Spec.Revision != "canary" || m.Status.Revision != "canary" {
		t.Errorf("%s after vm upgrade: spec.revision %q, status.revision %q, want canary", vms[0], m.Spec.Revision, m.Status.Revision)
	}
	if now := sidecarPID(vms[0]); now == pid {
		t.Errorf("%s moved to canary without its sidecar restarted", vms[0])
	}
	if rev, ok := groupRev(); ok {
		t.Errorf("WorkloadGroup istio.io/rev %q while the VMs are split, want none", rev)
	}
	if out, err := two("vm", "status", vms[0], "-o", "json"); err != nil || !strings.Contains(out, `"istiodController": "istiod-canary-lab"`) {
		t.Errorf("%s on canary is not registered by canary's istiod: %v", vms[0], err)
	}
	if out, err := two("vm", "upgrade", vms[0], "--revision", "default"); err != nil || !strings.Contains(out, "1 VM(s) on revision default") {
		t.Errorf("vm upgrade back to default: %v", err)
	}
	if rev, ok := groupRev(); !ok || rev != "default" {
		t.Errorf("WorkloadGroup istio.io/rev %q (set %v) with every VM back on default, want default", rev, ok)
	}

	// vm renew --force: the controller replaces the token.
	before := token(vms[0])
	pid = sidecarPID(vms[0])
	if out, err := two("vm", "renew", vms[0], "--force"); err != nil || !strings.Contains(out, "token replaced by the controller") || string(token(vms[0])) == string(before) {
		t.Errorf("vm renew --force: %v", err)
	}
	if now := sidecarPID(vms[0]); now != pid {
		t.Errorf("vm renew restarted the sidecar (pid %s -> %s)", pid, now)
	}

	// vm onboard --restart: the controller restarts the sidecar, records
	// the request, and the VM is Ready again.
	pid = sidecarPID(vms[1])
	if out, err := two("vm", "onboard", vms[1], "--restart"); err != nil || !strings.Contains(out, "sidecar restarted") {
		t.Errorf("vm onboard --restart: %v", err)
	}
	if now := sidecarPID(vms[1]); now == pid {
		t.Errorf("vm onboard --restart: the sidecar was not restarted (pid %s)", pid)
	}
	if m := get(vms[1]); !strings.HasSuffix(m.Status.OnboardRequest, v1alpha1.OnboardRestart) {
		t.Errorf("the restart request is not recorded: %+v", m.Status)
	}

	// vm stop, vm start: the machine powered on from here, Ready by the
	// controller's judgement.
	if _, err := two("vm", "stop", vms[1]); err != nil {
		t.Errorf("vm stop: %v", err)
	}
	if out, err := two("vm", "start", vms[1]); err != nil || !strings.Contains(out, vms[1]+": Ready") {
		t.Errorf("vm start: %v", err)
	}
	t.Logf("second engineer: vm status, verify, doctor, vm logs, vm upgrade (to canary and back), vm renew --force, vm onboard --restart, vm stop and vm start in %s",
		time.Since(begun).Round(time.Second))
}
