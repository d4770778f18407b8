package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/lab/build"
	labmachine "github.com/meshvm/meshvm/lab/labmachine"
	labstack "github.com/meshvm/meshvm/lab/stack"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/fleetmode"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// TestFleetFollowsAMovedVMOnLab: a MeshVM whose address no one pins (up
// pins no lab VM's) follows its VM to a new address with no command. The VM is stopped,
// moved to a new /30 and booted (as a DHCP lease may change across a
// restart); its proxy starts at the new address and istiod registers it
// there under the VM's name; the controller checks the VM's agent is
// there, adopts the address, sends the files naming it, and the VM is
// Ready and Healthy at the new address, its old entry gone.
func TestFleetFollowsAMovedVMOnLab(t *testing.T) {
	_, _, cfgPath, state := labSetup(t, "mv1")
	if out, err := run(t, "--config", cfgPath, "up", "--timeout", "30m"); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	ctx := context.Background()
	clients, rc, dc := labClients(t, state)
	meshVMs := dc.Resource(fleetmode.MeshVMs).Namespace("vmns")
	lab := labVMs(state)
	spec := workload.Spec{Namespace: "vmns", Group: "external-app"}
	sh := func(cmd string) string {
		out, _ := lab.Exec(ctx, "mv1", nil, "sh", "-c", cmd)
		return strings.TrimSpace(string(out))
	}
	controllerLog := filepath.Join(labstack.ControllerDir(filepath.Join(state, "lab")), "logs", "meshvm-controller.log")
	t.Cleanup(func() {
		// The MeshVM goes through its finalizer while the controller runs, before down.
		meshVMs.Delete(context.Background(), "mv1", metav1.DeleteOptions{})
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
			if _, err := meshVMs.Get(context.Background(), "mv1", metav1.GetOptions{}); err != nil {
				break
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(controllerLog)
			t.Logf("controller log:\n%s", tail(string(b), 80))
		}
	})
	get := func() v1alpha1.MeshVM {
		var m v1alpha1.MeshVM
		if u, err := meshVMs.Get(ctx, "mv1", metav1.GetOptions{}); err == nil {
			runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &m)
		}
		return m
	}
	readyAt := func(addr string) (bool, string) {
		m := get()
		c := findCond(m.Status.Conditions, "Ready")
		return c != nil && c.Status == metav1.ConditionTrue && m.Status.ObservedGeneration == m.Generation && m.Status.Address == addr &&
			entryHealthy(ctx, clients, spec, addr), fmt.Sprintf("address %s, %+v", m.Status.Address, c)
	}

	// up (fleet mode, the lab's default) pins no lab VM's address: the
	// controller sends files that let the VM's proxy register wherever
	// the VM is.
	if m := get(); m.Spec.Address != "" {
		t.Fatalf("up declared mv1 at spec.address %q: a lab VM's address is the provider's and is followed, not pinned", m.Spec.Address)
	}
	old := get().Status.Address
	waitFor(t, 3*time.Minute, "mv1 Ready with its address followed", func() (bool, string) {
		ok, s := readyAt(old)
		env := sh("cat /var/lib/istio/envoy/cluster.env")
		return ok && strings.Contains(env, "MESHVM_FOLLOW_ADDRESS='true'") && strings.Contains(env, `"meshvm.io/vm":"mv1"`), s
	})

	moved := time.Now()
	addr, err := lab.Readdress(ctx, "mv1")
	if err != nil {
		t.Fatal(err)
	}
	if addr == old {
		t.Fatalf("Readdress left mv1 at %s", old)
	}
	t.Logf("mv1 moved from %s to %s", old, addr)
	waitFor(t, 5*time.Minute, "mv1 followed to "+addr+", Ready and Healthy there", func() (bool, string) { return readyAt(addr) })
	t.Logf("mv1 followed, Ready and Healthy at %s %s after the move began", addr, time.Since(moved).Round(time.Second))
	if !hasEvent(ctx, t, clients, "mv1", "AddressFollowed") {
		t.Error("no AddressFollowed event")
	}
	waitFor(t, time.Minute, "the entry at "+old+" gone", func() (bool, string) {
		e, found, err := workload.FindEntry(ctx, clients, spec, old)
		return !found && err == nil, fmt.Sprintf("%+v %v", e, err)
	})
	if a, err := fleetstore.New(ctx, clients.Kube, "", "vmns").Address("mv1"); err != nil || a != addr {
		t.Errorf("recorded address %q (%v), want %s", a, err, addr)
	}
	if env := sh("cat /var/lib/istio/envoy/cluster.env"); !strings.Contains(env, "ISTIO_SVC_IP='"+addr+"'") {
		t.Errorf("cluster.env on mv1 does not name its new address:\n%s", env)
	}
	m := get()
	cred := findCond(m.Status.Conditions, v1alpha1.ConditionCredentialsValid)
	if m.Status.CertificateNotAfter == nil || !m.Status.CertificateNotAfter.After(time.Now()) || cred == nil || !strings.Contains(cred.Message, "certificate valid until") {
		t.Errorf("certificate: notAfter %v, CredentialsValid %+v", m.Status.CertificateNotAfter, cred)
	} else {
		t.Logf("CredentialsValid: %s", cred.Message)
	}
	t.Logf("kubectl get meshvms:\n%s", getTable(t, rc, "vmns"))
}

// labVMs is the lab's machine provider, to reach its VMs.
func labVMs(state string) *labmachine.Provider {
	return labmachine.New(slog.New(slog.NewTextHandler(io.Discard, nil)), filepath.Join(state, "lab", "vms"), build.DefaultCacheDir())
}

// vmShell runs a shell command on a lab VM: its output, trimmed; an error
// fails the test and lets it go on.
func vmShell(t *testing.T, lab *labmachine.Provider) func(vm, cmd string) string {
	return func(vm, cmd string) string {
		t.Helper()
		out, err := lab.Exec(context.Background(), vm, nil, "sh", "-c", cmd)
		if err != nil {
			t.Errorf("%s: %s: %v: %s", vm, cmd, err, out)
		}
		return strings.TrimSpace(string(out))
	}
}

// getMeshVM is a MeshVM as the API server has it now (zero when absent).
func getMeshVM(ctx context.Context, dc dynamic.Interface, ns, name string) v1alpha1.MeshVM {
	var m v1alpha1.MeshVM
	if u, err := dc.Resource(fleetmode.MeshVMs).Namespace(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
		runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &m)
	}
	return m
}

// labClients are the clients of the lab cluster whose state is under state.
func labClients(t *testing.T, state string) (workload.Clients, *rest.Config, dynamic.Interface) {
	t.Helper()
	kubeconfig := filepath.Join(state, "lab", "cluster", "kubeconfig")
	clients, err := fleet.KubeClients(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := fleet.RestConfig(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return clients, rc, dynamic.NewForConfigOrDie(rc)
}
