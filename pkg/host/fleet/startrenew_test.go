//go:build linux

package fleet

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	istiometa "istio.io/api/meta/v1alpha1"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/machine/machinetest"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/reason"
)

// bootable is the stand-in machine, stopped until Launch powers it on.
type bootable struct {
	*machinetest.Provider
	running machine.Machine
}

func (b bootable) Launch(ctx context.Context, s machine.Spec) (machine.Machine, error) {
	b.M = b.running
	return b.Provider.Launch(ctx, s)
}

// startFixture is driveFixture with vm1 stopped, onboarded before at its
// address, where the last boot's proxy left its entry Healthy.
func startFixture(t *testing.T) (driveFixture, *machinetest.Provider) {
	t.Helper()
	d := newDriveFixture(t)
	stopped := d.vm.m
	stopped.State, stopped.Addresses = machine.Stopped, nil
	ms := machinetest.New(stopped)
	d.r.machines = bootable{ms, d.vm.m}
	if err := d.r.store.SetAddress("vm1", d.addr); err != nil {
		t.Fatal(err)
	}
	d.putEntry(t, "old-connection", time.Now().Add(-time.Minute))
	return d, ms
}

// putEntry is istiod writing vm1's entry, Healthy, from a connection.
func (d driveFixture) putEntry(t *testing.T, connectedAt string, probed time.Time) {
	spec := d.r.spec
	api := d.r.clients.Istio.NetworkingV1().WorkloadEntries(spec.Namespace)
	we := &clientnetworking.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{Name: d.entry, Namespace: spec.Namespace,
		Annotations: map[string]string{"istio.io/autoRegistrationGroup": spec.Group, "istio.io/connectedAt": connectedAt}}}
	we.Spec.Address = d.addr
	we.Status.Conditions = []*istiometa.IstioCondition{{Type: "Healthy", Status: "True", LastProbeTime: timestamppb.New(probed)}}
	ctx := context.Background()
	if old, err := api.Get(ctx, d.entry, metav1.GetOptions{}); err == nil {
		we.ResourceVersion = old.ResourceVersion
		_, err = api.Update(ctx, we, metav1.UpdateOptions{})
		if err != nil {
			t.Error(err)
		}
		return
	}
	if _, err := api.Create(ctx, we, metav1.CreateOptions{}); err != nil {
		t.Error(err)
	}
}

// vm start powers the machine on and drives the core until the new boot's
// proxy reports Healthy: the lines it has always printed, the old proxy's
// Healthy not taken for the new one's, nothing sent to the agent.
func TestStartDrivesTheCoreUntilHealthy(t *testing.T) {
	d, ms := startFixture(t)
	ctx := testCtx(t)
	go func() {
		for !d.lines.contains("agent vm1: answering") && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(700 * time.Millisecond) // a pass sees the old entry first
		d.putEntry(t, "new-connection", time.Now())
	}()
	start := time.Now()
	if err := d.r.start(ctx, d.r.cfg.VMs[0], 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("took %s: the entry's change did not wake the driver", took)
	}
	want := []string{
		"machine vm1: running at " + d.addr,
		"agent vm1: answering",
		"healthy vm1: WorkloadEntry " + d.entry + " Healthy",
	}
	if got := d.lines.all(); !slices.Equal(got, want) {
		t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if ms.Launched() != 1 {
		t.Errorf("Launch called %d times, want 1", ms.Launched())
	}
	// Nothing is sent or restarted: the agent is asked its version, once.
	if calls := d.vm.agent.Calls(); !maps.Equal(calls, map[string]int{"GetVersion": 1}) {
		t.Errorf("RPCs: got %v, want GetVersion only", calls)
	}
}

// A boot whose proxy never reconnects ends at the timeout with the error
// vm start has always given.
func TestStartGivesUpAtTheTimeout(t *testing.T) {
	d, _ := startFixture(t)
	start := time.Now()
	err := d.r.start(testCtx(t), d.r.cfg.VMs[0], time.Second)
	want := "WorkloadEntry " + d.entry + ": the restarted sidecar has not reconnected and reported health after 1s [EntryTimedOut] [NotBackOnline vm1]"
	if worded(err) != want {
		t.Errorf("got %v, want %s", err, want)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("gave up after %s, want about the 1s timeout", took)
	}
}

// jwt is a token as the API server issues it for vm1, unsigned.
func jwt(t *testing.T, spec workload.Spec, issued, expires time.Time) []byte {
	t.Helper()
	claims, err := json.Marshal(map[string]any{"sub": "system:serviceaccount:" + spec.Namespace + ":" + spec.ServiceAccount, "iss": "k8s",
		"aud": []string{"istio-ca"}, "iat": issued.Unix(), "exp": expires.Unix(),
		"kubernetes.io": map[string]any{"secret": map[string]string{"name": workload.CredentialName("vm1"), "uid": "u1"}}})
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return []byte(enc([]byte(`{"alg":"RS256"}`)) + "." + enc(claims) + ".sig")
}

// vm renew through the core: a token with more than half its life is
// kept; past it (or with --force) a new one is issued and only that file
// sent, the sidecar left alone, with the lines vm renew has always printed.
func TestRenewRotatesOnlyTheToken(t *testing.T) {
	d := newDriveFixture(t)
	r := d.r
	r.machines = machinetest.New(d.vm.m)
	ctx := testCtx(t)
	// The tokens below are bound to vm1's Secret as the API server made it
	// (its UID u1): a token is kept only while that Secret is the one.
	secrets := r.clients.Kube.CoreV1().Secrets(r.spec.Namespace)
	secrets.Delete(ctx, workload.CredentialName("vm1"), metav1.DeleteOptions{})
	if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: workload.CredentialName("vm1"), Namespace: r.spec.Namespace, UID: "u1",
		Labels: ownership.Labels(map[string]string{ownership.VMLabel: "vm1"})}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var said []string
	say := func(e progress.Event) { said = append(said, e.Message) }

	fresh := jwt(t, r.spec, time.Now().Add(-time.Hour), time.Now().Add(72*time.Hour))
	if err := r.store.SetToken("vm1", fresh); err != nil {
		t.Fatal(err)
	}
	if err := r.renew(ctx, r.cfg.VMs[0], false, say); err != nil {
		t.Fatal(err)
	}
	old := jwt(t, r.spec, time.Now().Add(-72*time.Hour), time.Now().Add(time.Hour))
	if err := r.store.SetToken("vm1", old); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := r.renew(ctx, r.cfg.VMs[0], false, say); err != nil {
		t.Fatal(err)
	}
	if len(said) != 2 || said[0] != "vm1: token kept (more than half its life left)" ||
		!strings.HasPrefix(said[1], "vm1: new token valid until ") || !strings.HasSuffix(said[1], " sent; sidecar not restarted") {
		t.Fatalf("lines:\n%s", strings.Join(said, "\n"))
	}
	until, err := time.Parse(time.RFC3339, strings.TrimSuffix(strings.TrimPrefix(said[1], "vm1: new token valid until "), " sent; sidecar not restarted"))
	if life := r.cfg.Workload.TokenLifetime.Duration; err != nil || until.Before(before.Add(life).Add(-time.Second)) {
		t.Errorf("valid until %s (%v), want the token lifetime %s from now", until, err, life)
	}
	if got := agentFile(t, d.vm.agent.Root, onboard.TokenPath); got != "issued-token" {
		t.Errorf("token on the VM: %q, want the new one", got)
	}
	if got, _ := r.store.Token("vm1"); string(got) != "issued-token" {
		t.Errorf("token kept: %q, want the new one", got)
	}
	if calls := d.vm.agent.Calls(); !maps.Equal(calls, map[string]int{"StatFiles": 1, "PutFile": 1}) {
		t.Errorf("RPCs: got %v, want the token sent alone (no restart)", calls)
	}

	// --force renews a token with life left.
	said = nil
	if err := r.renew(ctx, r.cfg.VMs[0], true, say); err != nil || len(said) != 1 || !strings.HasSuffix(said[0], "sent; sidecar not restarted") {
		t.Errorf("force: %v, lines %q", err, said)
	}
}

// A stopped VM's token is not renewed: the error vm renew has always given.
func TestRenewRefusesAStoppedVM(t *testing.T) {
	d := newDriveFixture(t)
	stopped := d.vm.m
	stopped.State = machine.Stopped
	d.r.machines = machinetest.New(stopped)
	err := d.r.renew(testCtx(t), d.r.cfg.VMs[0], true, nil)
	if r, ok := reason.Of(err); !ok || err.Error() != "VM vm1 is stopped" || r.Reason != reason.VMStoppedRenew {
		t.Errorf("got %v, want VM vm1 is stopped, for the CLI to say how to start it", err)
	}
}

// agentFile is the file the agent wrote at path, under its sandbox (where
// /var/run is /run, as on the VM).
func agentFile(t *testing.T, root, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, strings.Replace(path, "/var/run/", "/run/", 1)))
	if err != nil {
		t.Error(err)
	}
	return string(b)
}
