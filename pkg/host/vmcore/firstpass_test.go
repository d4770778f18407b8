//go:build linux

package vmcore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	networkingv1 "istio.io/api/networking/v1"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/machine/machinetest"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/vmagent/agenttest"
)

// fixedMesh is a site's Istio as the target sees it.
type fixedMesh struct{ sidecar onboard.Sidecar }

func (fixedMesh) Revision(context.Context) string  { return "" }
func (fixedMesh) ClusterID(context.Context) string { return "cluster1" }
func (fixedMesh) IstiodVersion(context.Context, string) (string, string, error) {
	return "1.31.0", "test", nil
}
func (fixedMesh) IstiodAddress(context.Context, string) (string, error) { return "10.9.8.7", nil }
func (m fixedMesh) Sidecar(context.Context, string, string) (onboard.Sidecar, error) {
	return m.sidecar, nil
}

// cluster is what workload.Files reads: the mesh config, istiod's root
// certificate in the workload namespace, the WorkloadGroup, and tokens.
func cluster(t *testing.T) workload.Clients {
	kc := fake.NewClientset(
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"}, Data: map[string]string{"mesh": "defaultConfig: {}\n"}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-root-cert", Namespace: group.Namespace}, Data: map[string]string{"root-cert.pem": "ROOT\n"}},
	)
	// The fake API server keeps no tokens: answer a TokenRequest as one would.
	kc.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, k8sruntime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenRequest).DeepCopy()
		tr.Status = authv1.TokenRequestStatus{Token: "issued-token", ExpirationTimestamp: metav1.NewTime(time.Now().Add(time.Hour))}
		return true, tr, nil
	})
	ic := istiofake.NewSimpleClientset(&clientnetworking.WorkloadGroup{ObjectMeta: metav1.ObjectMeta{Name: group.Group, Namespace: group.Namespace},
		Spec: networkingv1.WorkloadGroup{Template: &networkingv1.WorkloadEntry{ServiceAccount: group.ServiceAccount}}})
	return workload.Clients{Kube: kc, Istio: ic}
}

// A first pass against a real agent: the agent answers, the files are
// generated and delivered into the VM; the sandbox has no systemd, so the
// sidecar's start fails and the pass returns that error with what it did.
func TestFirstPassDeliversThroughTheRealAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	store, _ := openStore(t, "vm1")
	ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(250), 1+rand.IntN(250))
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, onboard.AgentPort))
	if err != nil {
		t.Skipf("no loopback address %s here (%v)", ip, err)
	}
	lis.Close()
	ca, err := store.Dir.AgentCA()
	if err != nil {
		t.Fatal(err)
	}
	pair, _, err := store.Dir.VMCert(ca, "vm1", []string{ip})
	if err != nil {
		t.Fatal(err)
	}
	agent := agenttest.Start(t, agenttest.Options{Listen: net.JoinHostPort(ip, onboard.AgentPort), CA: ca, ServerCert: pair.Cert, ServerKey: pair.Key})

	dir := t.TempDir()
	side := onboard.Sidecar{PilotAgent: filepath.Join(dir, "pilot-agent"), Envoy: filepath.Join(dir, "envoy"), BootstrapTemplate: filepath.Join(dir, "bootstrap.json")}
	for _, f := range []string{side.PilotAgent, side.Envoy, side.BootstrapTemplate} {
		if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ms := machines{m: map[string]machine.Machine{"vm1": {Name: "vm1", State: machine.Running, Addresses: []string{ip}, Arch: runtime.GOARCH}}}
	var got events
	deps := Deps{Machines: ms, Kube: cluster(t), Workload: group, Record: got.record}
	target := NewTargets(fixedMesh{side}, "istio-system", nil).Snapshot(ctx)
	res, err := Reconcile(ctx, Spec{Name: "vm1", Generation: 1, RunsApp: true, TokenLifetime: time.Hour, FreshToken: true}, Status{}, target, store, deps)
	if err == nil || !strings.Contains(err.Error(), "sidecar") {
		t.Fatalf("got %v, want the sidecar's start to fail without systemd", err)
	}
	for _, ct := range []ConditionType{Machine, AgentReachable, Credentials} {
		if !res.Status.Conditions.IsTrue(ct) {
			c, _ := res.Status.Conditions.Get(ct)
			t.Errorf("%s: got %+v, want True", ct, c)
		}
	}
	if c, _ := res.Status.Conditions.Get(FilesInSync); c.Status != False || c.Reason != FilesFailed {
		t.Errorf("files: got %+v, want False %s", c, FilesFailed)
	}
	if want := []Reason{AgentAnswering, Joining}; !slices.Equal(got.reasons(), want) {
		t.Errorf("events: got %v, want %v", got.reasons(), want)
	}
	if got[1].Message != "revision default, Istio 1.31.0 (its istiod's)" {
		t.Errorf("joining: got %q", got[1].Message)
	}
	// Delivered into the VM, and kept in the store for the next pass.
	// The sandbox's /var/run links to its /run.
	if b, err := os.ReadFile(filepath.Join(agent.Root, strings.Replace(onboard.TokenPath, "/var/run/", "/run/", 1))); err != nil || string(b) != "issued-token" {
		t.Errorf("token on the VM: got %q %v", b, err)
	}
	if tok, _ := store.Token("vm1"); string(tok) != "issued-token" {
		t.Errorf("token in the store: got %q", tok)
	}
	// The revision is recorded only once the agent took the files and the
	// sidecar (re)started on them.
	if _, ok, _ := store.Joined("vm1"); ok {
		t.Errorf("joined recorded though the pass failed before the sidecar ran")
	}
	// One question per file asked once, in one call: the RPCs of a first pass.
	want := map[string]int{"GetVersion": 1, "Install": 2, "StatFiles": 1, "PutFile": 7, "ControlSidecar": 1}
	if calls := agent.Calls(); !maps.Equal(calls, want) {
		t.Errorf("RPCs of one pass: got %v, want %v", calls, want)
	}
}

// recordingApps is meshvm's app as the provisioner converges it.
type recordingApps struct{ ensured, removed []string }

func (a *recordingApps) Ensure(_ context.Context, vm string, port int) (string, error) {
	a.ensured = append(a.ensured, vm)
	return fmt.Sprintf("python3 -m http.server on port %d (meshvm-app.service unchanged)", port), nil
}

func (a *recordingApps) Remove(_ context.Context, vm string) (bool, error) {
	a.removed = append(a.removed, vm)
	return false, nil
}

// Provisioning, once per generation: the machine launched, the app
// converged, the agent's files put through the provider with the identity
// the store issues, then the agent asked its version once. A second pass of
// the generation only looks the machine up again.
func TestProvisioningRunsOncePerGeneration(t *testing.T) {
	ctx := testCtx(t)
	store, _ := openStore(t, "vm1")
	ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(250), 1+rand.IntN(250))
	if lis, err := net.Listen("tcp", net.JoinHostPort(ip, onboard.AgentPort)); err != nil {
		t.Skipf("no loopback address %s here (%v)", ip, err)
	} else {
		lis.Close()
	}
	id, err := store.AgentIdentity("vm1", []string{ip})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := store.Dir.AgentCA()
	if err != nil {
		t.Fatal(err)
	}
	// The agent the provider "starts" is this one, already listening.
	agent := agenttest.Start(t, agenttest.Options{Listen: net.JoinHostPort(ip, onboard.AgentPort), CA: ca, ServerCert: id.Cert, ServerKey: id.Key})
	ms := machinetest.New(machine.Machine{Name: "vm1", State: machine.Running, Addresses: []string{ip}, Arch: runtime.GOARCH})
	apps := &recordingApps{}
	var got events
	deps := Deps{Machines: ms, Kube: cluster(t), Workload: group, Record: got.record, Apps: apps,
		AgentBinary: func(arch string) ([]byte, error) { return []byte("vmagent for " + arch), nil }}
	// The mesh fails each pass right after the agent step: what matters here
	// is what came before.
	target := NewTargets(failingMesh{}, "istio-system", nil).Snapshot(ctx)
	spec := Spec{Name: "vm1", Generation: 1, RunsApp: true, AppPort: 8000, Provision: true, Machine: machine.Spec{Name: "vm1"}}
	res, err := Reconcile(ctx, spec, Status{}, target, store, deps)
	if err == nil || !strings.Contains(err.Error(), "no istiod address") {
		t.Fatalf("got %v, want the mesh's error after the agent step", err)
	}
	if ms.Launched() != 1 || len(apps.ensured) != 1 || res.Status.Provisioned != 1 {
		t.Errorf("launched %d, app ensured %v, provisioned generation %d; want one of each", ms.Launched(), apps.ensured, res.Status.Provisioned)
	}
	if string(ms.File("/usr/local/bin/vmagent")) != "vmagent for "+runtime.GOARCH || string(ms.File("/etc/meshvm/agent/server.pem")) != string(id.Cert) {
		t.Errorf("agent files put: %d, want the binary and the store's certificate", ms.Files())
	}
	if scripts := ms.Scripts(); len(scripts) != 1 || !strings.Contains(scripts[0], "systemctl restart vmagent.service") {
		t.Errorf("scripts run: %q, want the agent (re)started", scripts)
	}
	want := []Reason{MachineRunning, AppServing, AgentAnswering}
	if !slices.Equal(got.reasons()[:3], want) || got[0].Message != "running at "+ip || got[2].Object == "" {
		t.Errorf("events: got %+v, want %v with the address and the agent's version", got, want)
	}
	if calls := agent.Calls(); calls["GetVersion"] != 1 {
		t.Errorf("GetVersion called %d times, want once", calls["GetVersion"])
	}

	// AgentOnly (fleet mode's workstation): the same pass, ended once the
	// agent answers, before the mesh is asked for anything.
	agentOnly := spec
	agentOnly.AgentOnly, agentOnly.Generation = true, 2
	only, err := Reconcile(ctx, agentOnly, res.Status, target, store, deps)
	if err != nil || only.Done || !only.Status.Conditions.IsTrue(AgentReachable) || only.Status.Provisioned != 2 {
		t.Errorf("AgentOnly: %v, %+v; want the agent (re)installed and answering, no error from the mesh", err, only)
	}
	if c, _ := only.Status.Conditions.Get(Credentials); c.Status == True {
		t.Errorf("AgentOnly issued credentials: %+v", c)
	}

	files := ms.Files()
	spec.Generation = 2
	if _, err := Reconcile(ctx, spec, only.Status, target, store, deps); err == nil {
		t.Fatal("the second pass should fail at the mesh as the first did")
	}
	if ms.Launched() != 2 || len(apps.ensured) != 2 || len(ms.Scripts()) != 2 || ms.Files() != files || ms.Infos() != 1 {
		t.Errorf("second pass: launched %d, app ensured %d, scripts %d, info %d; want only a look at the machine", ms.Launched(), len(apps.ensured), len(ms.Scripts()), ms.Infos())
	}
}

type failingMesh struct{ fixedMesh }

func (failingMesh) IstiodAddress(context.Context, string) (string, error) {
	return "", errors.New("no istiod address")
}

// execRecorder is a machine provider that records the commands it runs.
type execRecorder struct {
	machines
	ran []string
}

func (p *execRecorder) Exec(_ context.Context, name string, _ io.Reader, args ...string) ([]byte, error) {
	p.ran = append(p.ran, name+": "+strings.Join(args, " "))
	return nil, nil
}

// Delete of a VM that is not ours to delete: the real agent uninstalls,
// then the provider removes the agent itself.
func TestDeleteRemovesTheAgentThroughTheRealAgent(t *testing.T) {
	ctx := testCtx(t)
	store, _ := openStore(t, "vm1")
	ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(250), 1+rand.IntN(250))
	if lis, err := net.Listen("tcp", net.JoinHostPort(ip, onboard.AgentPort)); err != nil {
		t.Skipf("no loopback address %s here (%v)", ip, err)
	} else {
		lis.Close()
	}
	ca, err := store.Dir.AgentCA()
	if err != nil {
		t.Fatal(err)
	}
	pair, _, err := store.Dir.VMCert(ca, "vm1", []string{ip})
	if err != nil {
		t.Fatal(err)
	}
	agent := agenttest.Start(t, agenttest.Options{Listen: net.JoinHostPort(ip, onboard.AgentPort), CA: ca, ServerCert: pair.Cert, ServerKey: pair.Key})
	ms := &execRecorder{}
	m := machine.Machine{Name: "vm1", State: machine.Running, Addresses: []string{ip}}
	r, err := Delete(ctx, "vm1", m, true, store, Deps{Machines: ms, Kube: cluster(t), Workload: group})
	if err != nil {
		t.Fatal(err)
	}
	if !r.AgentRemoved || agent.Calls()["Uninstall"] != 1 {
		t.Errorf("got %+v, Uninstall called %d times; want the agent's uninstall then its removal", r, agent.Calls()["Uninstall"])
	}
	if len(ms.ran) != 1 || !strings.Contains(ms.ran[0], "systemctl disable --now vmagent.service") {
		t.Errorf("provider ran %q, want the agent's removal", ms.ran)
	}
}
