//go:build linux

package vmctl

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/vmagent/agenttest"
)

// The controller against a real agent over real mTLS, its identity and
// the agent's from the store on Secrets: the first pass reaches the agent
// (connected, its version in the status), generates and sends the files;
// the sandbox has no systemd, so the sidecar's start fails, which is an
// error for the work queue to back off on. Deleting the MeshVM has the
// agent undo its changes, revokes the token and forgets the records.
func TestAgainstARealAgent(t *testing.T) {
	ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(250), 1+rand.IntN(250))
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, onboard.AgentPort))
	if err != nil {
		t.Skipf("no loopback address %s here (%v)", ip, err)
	}
	lis.Close()
	f := newFixture(t, meshVM("vm1", func(m *v1alpha1.MeshVM) { m.Spec.Address = ip }))
	ctx := context.Background()
	token := f.cluster(t)
	store := fleetstore.New(ctx, f.kube, "", "vmns")
	ca, err := store.CA()
	if err != nil {
		t.Fatal(err)
	}
	id, err := store.AgentIdentity("vm1", []string{ip})
	if err != nil {
		t.Fatal(err)
	}
	agent := agenttest.Start(t, agenttest.Options{Listen: net.JoinHostPort(ip, onboard.AgentPort), CA: ca, ServerCert: id.Cert, ServerKey: id.Key})

	_, vm, err := f.reconcile(t, "vm1")
	if err == nil || !strings.Contains(err.Error(), "sidecar") {
		t.Fatalf("got %v, want the sidecar's start to fail without systemd", err)
	}
	for _, ct := range []string{string(vmcore.AgentReachable), v1alpha1.ConditionCredentialsValid} {
		if c := findCondition(vm.Status.Conditions, ct); c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("%s: %+v, want True", ct, c)
		}
	}
	if c := findCondition(vm.Status.Conditions, "Ready"); c == nil || c.Status != metav1.ConditionFalse || c.Reason != string(vmcore.ReconcileError) {
		t.Errorf("Ready: %+v", c)
	}
	if !strings.HasPrefix(vm.Status.Agent, "connected ") || vm.Status.Address != ip {
		t.Errorf("status: %+v", vm.Status)
	}
	if tok, err := os.ReadFile(filepath.Join(agent.Root, "run/secrets/tokens/istio-token")); err != nil || string(tok) != token {
		t.Errorf("the token on the VM: %q %v", tok, err)
	}
	if tok, _ := fleetstore.New(ctx, f.kube, "", "vmns").Token("vm1"); string(tok) != token {
		t.Errorf("the token in the store: %q", tok)
	}
	// The controller called as its own identity, not a person's.
	if sec, err := f.kube.CoreV1().Secrets(fleetstore.DefaultNamespace).Get(ctx, fleetstore.IdentitySecret, metav1.GetOptions{}); err != nil || len(sec.Data["tls.crt"]) == 0 {
		t.Errorf("no controller identity Secret: %v", err)
	}

	// Drift: the hosts block removed on the VM; the next pass (each
	// rechecks what the first delivered) puts it back.
	hosts := filepath.Join(agent.Root, "etc/hosts")
	if b, err := os.ReadFile(hosts); err != nil || !strings.Contains(string(b), "BEGIN meshvm") {
		t.Fatalf("no hosts block after the first pass: %v\n%s", err, b)
	}
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.reconcile(t, "vm1")
	if b, _ := os.ReadFile(hosts); !strings.Contains(string(b), "BEGIN meshvm") || !strings.Contains(string(b), "istiod.istio-system.svc") {
		t.Errorf("the hosts block was not repaired:\n%s", b)
	}

	// Delete: the agent undoes, the token is revoked, the records go.
	if err := f.client.Delete(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	if _, gone, err := f.reconcile(t, "vm1"); err != nil || gone.Name != "" {
		t.Fatalf("delete: %v, still there: %+v", err, gone.Status)
	}
	if _, err := os.Stat(filepath.Join(agent.Root, "run/secrets/tokens/istio-token")); err == nil {
		t.Error("the token is still on the VM after its MeshVM was deleted")
	}
	if _, err := f.kube.CoreV1().Secrets("vmns").Get(ctx, "meshvm-vm1", metav1.GetOptions{}); err == nil {
		t.Error("the token's Secret is left: not revoked")
	}
	if a, _ := fleetstore.New(ctx, f.kube, "", "vmns").Address("vm1"); a != "" {
		t.Error("the records are left")
	}
	removed := false
	for _, e := range f.drainEvents() {
		removed = removed || strings.Contains(e, ReasonRemoved)
	}
	if !removed {
		t.Error("no Removed event")
	}
}

// cluster gives the fixture what the core reads from a cluster with Istio
// (the mesh config, the root certificate, tokens from the API server) and
// the sidecar's files, and the real clock the agents' certificates are
// checked against. It returns the token the API server issues (a JWT
// valid for an hour).
func (f *fixture) cluster(t *testing.T) string {
	ctx := context.Background()
	now := time.Now()
	claims := fmt.Sprintf(`{"iat":%d,"exp":%d,"sub":"system:serviceaccount:vmns:app-sa"}`, now.Unix(), now.Add(time.Hour).Unix())
	token := "eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString([]byte(claims)) + ".c2ln"
	f.kube.CoreV1().ConfigMaps("istio-system").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"},
		Data: map[string]string{"mesh": "defaultConfig: {}\n"}}, metav1.CreateOptions{})
	f.kube.CoreV1().ConfigMaps("vmns").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-root-cert", Namespace: "vmns"},
		Data: map[string]string{"root-cert.pem": "ROOT\n"}}, metav1.CreateOptions{})
	f.kube.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, k8sruntime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenRequest).DeepCopy()
		tr.Status = authv1.TokenRequestStatus{Token: token, ExpirationTimestamp: metav1.NewTime(now.Add(time.Hour))}
		return true, tr, nil
	})
	f.r.Now = nil
	dir := t.TempDir()
	side := filepath.Join(dir, "1.31.0", runtime.GOARCH)
	os.MkdirAll(side, 0o755)
	for _, name := range []string{"pilot-agent", "envoy", "envoy_bootstrap_tmpl.json"} {
		if err := os.WriteFile(filepath.Join(side, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.r.Sidecars = &Sidecars{Dir: dir}
	return token
}
