package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	labstack "github.com/meshvm/meshvm/lab/stack"
	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// TestFleetOnLab is fleet mode on real parts: two VMs onboarded by hostctl
// up with 10-minute tokens (the API server's floor) and 1-minute
// certificates, adopted into the cluster, then kept by the controller
// running as a lab process, with no hostctl command after adopt:
//   - declare → Ready: both MeshVMs Ready, adoption sending nothing;
//   - fl1's hosts block removed and its sidecar stopped: repaired;
//   - bad MeshVMs refused by the schema or reported with the fix, the
//     others undisturbed;
//   - fl1's MeshVM deleted: its token refused, its entry gone, its agent's
//     changes undone;
//   - fl2, left alone the whole time, stays Healthy past its first token's
//     expiry with its sidecar never restarted: the case that strands a VM
//     without fleet mode. It runs beside the cases above, in one lab.
func TestFleetOnLab(t *testing.T) {
	_, _, cfgPath, state := labSetup(t, "fl1", "fl2")
	fleetOff(t, cfgPath) // onboarded without fleet mode, then adopted
	f, err := os.OpenFile(cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("workload:\n  tokenLifetime: 10m\n  certificateLifetime: 1m\n")
	f.Close()
	if out, err := run(t, "--config", cfgPath, "up", "--timeout", "50m"); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	ctx := context.Background()
	clients, rc, dc := labClients(t, state)
	lab := labVMs(state)
	spec := workload.Spec{Namespace: "vmns", Group: "external-app"}
	sh := vmShell(t, lab)
	sidecarPID := func(vm string) string { return sh(vm, "systemctl show -p MainPID --value istio.service") }
	firstToken, err := os.ReadFile(filepath.Join(state, "vms", "fl2", "files", "istio-token"))
	if err != nil {
		t.Fatal(err)
	}
	first, err := credinfo.ParseToken(firstToken)
	if err != nil {
		t.Fatal(err)
	}
	fl2PID := sidecarPID("fl2")

	// The MeshVMs go before down, through the finalizer, while the controller runs.
	controllerLog := filepath.Join(labstack.ControllerDir(filepath.Join(state, "lab")), "logs", "meshvm-controller.log")
	t.Cleanup(func() {
		dc.Resource(fleetmode.MeshVMs).Namespace("vmns").DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{})
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
			l, err := dc.Resource(fleetmode.MeshVMs).Namespace("vmns").List(context.Background(), metav1.ListOptions{})
			if err == nil && len(l.Items) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("MeshVMs not finalized 2m after their delete: %v", err)
				break
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(controllerLog)
			t.Logf("controller log:\n%s", tail(string(b), 80))
		}
	})

	// Adopt: the records and MeshVMs into the cluster, the controller
	// started as a lab process, the VMs awaited Ready. Run again, it
	// changes nothing.
	start := time.Now()
	out, err := run(t, "--config", cfgPath, "fleet", "adopt", "-o", "json")
	t.Logf("fleet adopt (%s):\n%s", time.Since(start).Round(time.Second), out)
	var changes []workload.Change
	if jerr := json.NewDecoder(strings.NewReader(out)).Decode(&changes); err != nil || jerr != nil {
		t.Fatalf("fleet adopt: %v %v", err, jerr)
	}
	if !hasChange(changes, "MeshVM vmns/fl1", "created") || !hasChange(changes, "Secret meshvm-system/meshvm-agent-ca", "created") {
		t.Errorf("fleet adopt: got %+v, want the CA and the MeshVMs created", changes)
	}
	if out, err := run(t, "--config", cfgPath, "fleet", "adopt", "-o", "json"); err != nil || strings.Count(out, `"unchanged"`) != 7 || !strings.Contains(out, "controller already running") {
		t.Errorf("fleet adopt again: %v\n%s\nwant all 7 objects unchanged and the controller kept", err, out)
	}
	if out, err := run(t, "--config", cfgPath, "fleet", "status"); err != nil || strings.Count(out, " True ") < 2 {
		t.Errorf("fleet status: %v\n%s", err, out)
	} else {
		logOutput(t, "hostctl fleet status", out)
	}
	get := func(name string) v1alpha1.MeshVM { return getMeshVM(ctx, dc, "vmns", name) }
	ready := func(name string) (bool, string) {
		m := get(name)
		c := findCond(m.Status.Conditions, "Ready")
		return c != nil && c.Status == metav1.ConditionTrue && m.Status.ObservedGeneration == m.Generation, fmt.Sprintf("%+v", m.Status)
	}
	for _, vm := range []string{"fl1", "fl2"} {
		if ok, s := ready(vm); !ok {
			t.Errorf("%s not Ready after fleet adopt: %s", vm, s)
		}
	}
	t.Logf("kubectl get meshvms:\n%s", getTable(t, rc, "vmns"))
	for _, vm := range []string{"fl1", "fl2"} {
		m := get(vm)
		if c := findCond(m.Status.Conditions, "FilesInSync"); c == nil || c.Reason != "InPlace" {
			t.Errorf("%s: adoption sent files: %+v", vm, c)
		}
		if m.Status.Agent != "connected e2e" || m.Status.Sidecar != "active" || m.Status.Healthy != "True" || m.Status.TokenExpiresAt == nil {
			t.Errorf("%s: status %+v", vm, m.Status)
		}
		if c := findCond(m.Status.Conditions, "UpToDate"); c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("%s: UpToDate %+v", vm, c)
		}
	}
	if now := sidecarPID("fl2"); now != fl2PID {
		t.Errorf("adoption restarted fl2's sidecar (pid %s -> %s)", fl2PID, now)
	}

	// Drift on fl1, repaired with no command: the hosts block and the
	// sidecar. The controller may act between the two (a pass in flight
	// sees the hosts block gone and restarts the sidecar, cancelling the
	// stop): what counts is that both come back, the sidecar restarted.
	fl1 := get("fl1")
	fl1PID := sidecarPID("fl1")
	repaired := time.Now()
	lab.Exec(ctx, "fl1", nil, "sh", "-c", `awk '/^# BEGIN meshvm/{skip=1} !skip{print} /^# END meshvm/{skip=0}' /etc/hosts > /tmp/hosts && cat /tmp/hosts > /etc/hosts; systemctl stop istio.service`)
	waitFor(t, 2*time.Minute, "fl1's hosts block back and its sidecar restarted", func() (bool, string) {
		hosts := sh("fl1", "grep -c 'BEGIN meshvm' /etc/hosts || true")
		active := sh("fl1", "systemctl is-active istio.service || true")
		pid := sidecarPID("fl1")
		return hosts == "1" && active == "active" && pid != fl1PID && pid != "0", "hosts blocks " + hosts + ", sidecar " + active + " pid " + pid
	})
	waitFor(t, 2*time.Minute, "fl1 Ready again", func() (bool, string) {
		ok, s := ready("fl1")
		return ok && entryHealthy(ctx, clients, spec, fl1.Status.Address), s
	})
	t.Logf("fl1 repaired (hosts block, sidecar) and Healthy in %s", time.Since(repaired).Round(time.Second))
	if !hasEvent(ctx, t, clients, "fl1", "Restarted") {
		t.Errorf("fl1: no Event tells the sidecar's restart")
	}

	// Bad input: refused by the schema, or reported with the fix.
	bad := func(name string, mutate func(*v1alpha1.MeshVM)) error {
		m := fleetmode.MeshVM(fleetmode.VM{Name: name, RunsApp: true}, workload.Spec{Namespace: "vmns", Group: "external-app"}, "10.99.0.1", "", 0, 0)
		mutate(m)
		obj, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
		_, err := dc.Resource(fleetmode.MeshVMs).Namespace("vmns").Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
		return err
	}
	if err := bad("bad-address", func(m *v1alpha1.MeshVM) { m.Spec.Address = "not an address!" }); err == nil || !strings.Contains(err.Error(), "spec.address") {
		t.Errorf("a MeshVM with an invalid address: got %v, want it refused naming spec.address", err)
	}
	if err := bad("bad-group", func(m *v1alpha1.MeshVM) { m.Spec.WorkloadGroup = "no-such-group" }); err != nil {
		t.Fatal(err)
	}
	if err := bad("bad-revision", func(m *v1alpha1.MeshVM) { m.Spec.Revision = "nosuch" }); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"bad-group": "WorkloadGroupNotFound", "bad-revision": "RevisionNotRunning"} {
		waitFor(t, time.Minute, name+" reported", func() (bool, string) {
			c := findCond(get(name).Status.Conditions, "Ready")
			return c != nil && c.Status == metav1.ConditionFalse && c.Reason == want, fmt.Sprintf("%+v", c)
		})
		t.Logf("%s: %s", name, findCond(get(name).Status.Conditions, "Ready").Message)
	}
	if ok, s := ready("fl2"); !ok {
		t.Errorf("fl2 disturbed by the bad MeshVMs: %s", s)
	}
	for _, name := range []string{"bad-group", "bad-revision"} {
		dc.Resource(fleetmode.MeshVMs).Namespace("vmns").Delete(ctx, name, metav1.DeleteOptions{})
	}

	// Delete fl1: token refused, entry gone, the agent's changes undone.
	rec, err := clients.Kube.CoreV1().Secrets(fleetstore.DefaultNamespace).Get(ctx, fleetstore.RecordName("vmns", "fl1"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fl1Token := rec.Data["istio-token"]
	if err := dc.Resource(fleetmode.MeshVMs).Namespace("vmns").Delete(ctx, "fl1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	waitFor(t, time.Minute, "fl1's MeshVM finalized", func() (bool, string) {
		_, err := dc.Resource(fleetmode.MeshVMs).Namespace("vmns").Get(ctx, "fl1", metav1.GetOptions{})
		return err != nil && strings.Contains(err.Error(), "not found"), fmt.Sprint(err)
	})
	if _, found, err := workload.FindEntry(ctx, clients, spec, fl1.Status.Address); found || err != nil {
		t.Errorf("fl1's WorkloadEntry left after its MeshVM was deleted (%v)", err)
	}
	waitFor(t, 30*time.Second, "fl1's token refused", func() (bool, string) {
		r, err := workload.Review(ctx, clients.Kube, fl1Token)
		return err == nil && !r.Authenticated, fmt.Sprintf("%+v %v", r, err)
	})
	t.Logf("fl1 deleted: token refused and entry gone %s after the delete", time.Since(deleted).Round(time.Second))
	if got := sh("fl1", "systemctl is-active istio.service || true"); got == "active" {
		t.Errorf("fl1's sidecar still runs after its MeshVM was deleted")
	}
	if !hasEvent(ctx, t, clients, "fl1", "Removed") {
		t.Errorf("fl1: no Removed event")
	}
	if _, err := clients.Kube.CoreV1().Secrets(fleetstore.DefaultNamespace).Get(ctx, fleetstore.RecordName("vmns", "fl1"), metav1.GetOptions{}); err == nil {
		t.Errorf("fl1's records left after its MeshVM was deleted")
	}

	// fl2, left alone: Healthy past its first token's expiry, its token
	// rotated with no restart.
	until := first.ExpiresAt.Add(45 * time.Second)
	t.Logf("watching fl2 until %s (its first token expires %s)", until.Format(time.TimeOnly), first.ExpiresAt.Format(time.TimeOnly))
	fl2 := get("fl2")
	for time.Now().Before(until) {
		if !entryHealthy(ctx, clients, spec, fl2.Status.Address) {
			t.Errorf("fl2 left Healthy at %s", time.Now().Format(time.TimeOnly))
		}
		time.Sleep(15 * time.Second)
	}
	m := get("fl2")
	if m.Status.TokenRotatedAt == nil || !m.Status.TokenExpiresAt.After(first.ExpiresAt) {
		t.Errorf("fl2's token was not rotated: %+v", m.Status)
	}
	if ok, s := ready("fl2"); !ok || !entryHealthy(ctx, clients, spec, fl2.Status.Address) {
		t.Errorf("fl2 past its first token's expiry: not Ready and Healthy: %s", s)
	}
	if now := sidecarPID("fl2"); now != fl2PID {
		t.Errorf("fl2's sidecar restarted (pid %s -> %s)", fl2PID, now)
	}
	out, err = run(t, "--config", cfgPath, "vm", "status", "fl2", "-o", "json")
	var st []fleet.VMStatus
	if jerr := json.Unmarshal([]byte(jsonPart(out)), &st); jerr != nil || len(st) != 1 || st[0].CertNotAfter == nil || st[0].CertNotAfter.Before(time.Now()) {
		t.Errorf("fl2's certificate after its first token's expiry: %v %v\n%s", err, jerr, out)
	} else if st[0].CertNotAfter.Sub(first.ExpiresAt) < 0 {
		t.Errorf("fl2's certificate (until %s) was not issued after its first token expired (%s)", st[0].CertNotAfter, first.ExpiresAt)
	}
	t.Logf("fl2 after its first token's expiry; kubectl get meshvms:\n%s", getTable(t, rc, "vmns"))
}

// fleetOff turns fleet mode off in a lab config (it is on by default
// there): the test is of the workstation driving the VMs itself.
func fleetOff(t *testing.T, cfgPath string) {
	t.Helper()
	f, err := os.OpenFile(cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("fleet:\n  enabled: false\n"); err != nil {
		t.Fatal(err)
	}
}

func hasChange(cs []workload.Change, obj, action string) bool {
	for _, c := range cs {
		if c.Object == obj && string(c.Action) == action {
			return true
		}
	}
	return false
}

func findCond(cs []metav1.Condition, t string) *metav1.Condition {
	for i := range cs {
		if cs[i].Type == t {
			return &cs[i]
		}
	}
	return nil
}

func entryHealthy(ctx context.Context, c workload.Clients, s workload.Spec, addr string) bool {
	e, ok, err := workload.FindEntry(ctx, c, s, addr)
	return err == nil && ok && e.Healthy == "True" && e.DisconnectedAt == ""
}

func hasEvent(ctx context.Context, t *testing.T, c workload.Clients, vm, reason string) bool {
	l, err := c.Kube.EventsV1().Events("vmns").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Errorf("events: %v", err)
		return false
	}
	for _, e := range l.Items {
		if e.Regarding.Name == vm && e.Reason == reason {
			return true
		}
	}
	return false
}

// waitFor polls cond until it holds, failing the test after d with what
// it saw last.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s (last: %s)", what, d, last)
		}
		time.Sleep(time.Second)
	}
}

// getTable is what kubectl get meshvms prints: the API server's table of
// the CRD's printer columns.
func getTable(t *testing.T, rc *rest.Config, ns string) string {
	cfg := rest.CopyConfig(rc)
	cfg.GroupVersion = &v1alpha1.GroupVersion
	cfg.APIPath = "/apis"
	cfg.NegotiatedSerializer = runtime.NewSimpleNegotiatedSerializer(runtime.SerializerInfo{})
	rcl, err := rest.UnversionedRESTClientFor(cfg)
	if err != nil {
		return err.Error()
	}
	b, err := rcl.Get().AbsPath("/apis/meshvm.io/v1alpha1/namespaces", ns, "meshvms").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(context.Background())
	if err != nil {
		return err.Error()
	}
	var tab metav1.Table
	if err := json.Unmarshal(b, &tab); err != nil {
		return err.Error()
	}
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 3, ' ', 0)
	var head []string
	for _, c := range tab.ColumnDefinitions {
		if c.Priority == 0 {
			head = append(head, strings.ToUpper(c.Name))
		}
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, r := range tab.Rows {
		var cells []string
		for i, c := range r.Cells {
			if tab.ColumnDefinitions[i].Priority == 0 {
				cells = append(cells, fmt.Sprint(c))
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
	return sb.String()
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
