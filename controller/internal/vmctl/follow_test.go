//go:build linux

package vmctl

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	metaapi "istio.io/api/meta/v1alpha1"
	networkingapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/envfile"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/pkg/mtls"
	"github.com/meshvm/meshvm/vmagent/agentsim"
)

// A VM that moved is followed with no command, through the entry its proxy
// registered at its new address (labelled with its name) once its agent
// there proves to be its own over mTLS: the controller adopts the address,
// sends the files that name it, deletes the entry left at the old one and
// records the new one. An entry naming the VM at an address where another
// VM's agent answers moves nothing. Real agents (agentsim: the agent's own
// handlers over real mTLS, a simulated istio.service).
func TestFollowsAMovedVM(t *testing.T) {
	base := fmt.Sprintf("127.%d.%d.", 1+rand.IntN(250), rand.IntN(250))
	old := base + "200" // where the VM was: nothing answers there now
	f := newFixture(t, meshVM("vm1", func(m *v1alpha1.MeshVM) {
		m.Spec.Address = ""
		m.Spec.CertificateLifetime = &metav1.Duration{Duration: 90 * time.Second}
	}))
	f.cluster(t)
	ctx := context.Background()
	store := fleetstore.New(ctx, f.kube, "", "vmns")
	ca, err := store.CA()
	if err != nil {
		t.Fatal(err)
	}
	// The VM's agent keeps the certificate issued at its old address: it
	// names the VM, which is what the controller checks.
	id, err := store.AgentIdentity("vm1", []string{old})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.SetAddress("vm1", old); err != nil {
		t.Fatal(err)
	}
	names := []string{"vm1", "other"}
	fleet, err := agentsim.Start(agentsim.Options{N: 2, Dir: t.TempDir(), First: netip.MustParseAddr(base + "1"), Name: func(i int) string { return names[i] },
		Identity: func(name, addr string) ([]byte, []byte, []byte, error) {
			if name == "vm1" {
				return id.Cert, id.Key, id.ClientCA, nil
			}
			o, err := store.AgentIdentity(name, []string{addr})
			return o.Cert, o.Key, o.ClientCA, err
		}})
	if err != nil {
		t.Skipf("no loopback addresses %s* here: %v", base, err)
	}
	t.Cleanup(fleet.Close)
	moved, other := fleet.VMs[0], fleet.VMs[1]
	// The workload certificate pilot-agent holds on the VM.
	now := time.Now()
	// As istiod issues it: started 2 minutes before signing, living the 90 s asked.
	certPEM, _, err := ca.Issue(mtls.IssueOptions{CommonName: "spiffe", NotBefore: now.Add(-2 * time.Minute), NotAfter: now.Add(90 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(moved.Root, "etc/certs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(moved.Root, "etc/certs/cert-chain.pem"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	f.putEntry(t, "app-"+strings.ReplaceAll(old, ".", "-"), old, time.Time{}) // left at the old address, disconnected
	f.putEntry(t, "forged", other.Address, now.Add(-time.Minute))
	_, vm, err := f.reconcile(t, "vm1")
	if err == nil || vm.Status.Address == other.Address {
		t.Fatalf("a forged entry moved the VM to %s (err %v)", vm.Status.Address, err)
	}
	if !hasEvent(f.drainEvents(), ReasonAddressNotFollowed, "no agent there proves to be vm1's") {
		t.Error("no AddressNotFollowed event for the forged entry")
	}

	// The VM's proxy, started at its new address, registers there.
	entry := "app-" + strings.ReplaceAll(moved.Address, ".", "-")
	f.putEntry(t, entry, moved.Address, now)
	_, vm, _ = f.reconcile(t, "vm1")
	if vm.Status.Address != moved.Address {
		t.Fatalf("status.address %q, want %s", vm.Status.Address, moved.Address)
	}
	if !hasEvent(f.drainEvents(), ReasonAddressFollowed, "moved from "+old+" to "+moved.Address) {
		t.Error("no AddressFollowed event")
	}
	b, err := moved.ReadFile("/var/lib/istio/envoy/cluster.env")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	if err := envfile.Parse("cluster.env", b, env); err != nil {
		t.Fatal(err)
	}
	if env["ISTIO_SVC_IP"] != moved.Address || env["SECRET_TTL"] != "1m30s" || env[agentspec.FollowAddressKey] != "true" ||
		!strings.Contains(env["ISTIO_METAJSON_LABELS"], `"`+workloadfiles.VMLabel+`":"vm1"`) {
		t.Errorf("cluster.env sent to the moved VM:\n%s", b)
	}
	cred := findCondition(vm.Status.Conditions, v1alpha1.ConditionCredentialsValid)
	if cred == nil || cred.Status != metav1.ConditionTrue || !strings.Contains(cred.Message, "token bound to Secret vmns/") ||
		!strings.Contains(cred.Message, ", valid until ") || !strings.Contains(cred.Message, "certificate valid until ") ||
		!strings.Contains(cred.Message, "(lifetime 1m30s)") {
		t.Errorf("CredentialsValid: %+v", cred)
	}
	if cna := vm.Status.CertificateNotAfter; cna == nil || !cna.Time.Equal(now.Add(90*time.Second).Truncate(time.Second)) {
		t.Errorf("status.certificateNotAfter %v, want %v", cna, now.Add(90*time.Second).Truncate(time.Second))
	}

	// The sidecar restarted with the new files: its new connection and
	// health report complete the move (told once).
	f.putEntry(t, entry, moved.Address, now.Add(time.Second))
	_, vm, err = f.reconcile(t, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if hasEvent(f.drainEvents(), ReasonAddressFollowed, "") {
		t.Error("the move told again")
	}
	if c := findCondition(vm.Status.Conditions, v1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Ready: %+v", c)
	}
	if c := findCondition(vm.Status.Conditions, string(vmcore.AddressMoved)); c == nil || c.Reason != string(vmcore.StaleEntryDeleted) {
		t.Errorf("AddressMoved: %+v", c)
	}
	if a, _ := fleetstore.New(ctx, f.kube, "", "vmns").Address("vm1"); a != moved.Address {
		t.Errorf("recorded address %q, want %s", a, moved.Address)
	}
	left, _ := f.r.Kube.Istio.NetworkingV1().WorkloadEntries("vmns").List(ctx, metav1.ListOptions{})
	var kept []string
	for _, we := range left.Items {
		kept = append(kept, we.Name)
	}
	if strings.Join(kept, ",") != "app-"+strings.ReplaceAll(moved.Address, ".", "-")+",forged" {
		t.Errorf("entries left %v: want the new one and the forged one (not meshvm's to delete)", kept)
	}
	// The certificate pilot-agent holds lapses: CredentialsValid says so.
	lapsed, _, err := ca.Issue(mtls.IssueOptions{CommonName: "spiffe", NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(moved.Root, "etc/certs/cert-chain.pem"), lapsed, 0o644); err != nil {
		t.Fatal(err)
	}
	waitCert := time.Now().Add(10 * time.Second) // the agent's shared look notices the file on its own time
	for {
		_, vm, _ = f.reconcile(t, "vm1")
		cred = findCondition(vm.Status.Conditions, v1alpha1.ConditionCredentialsValid)
		if cred != nil && cred.Reason == string(vmcore.CertificateExpired) || time.Now().After(waitCert) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if cred == nil || cred.Status != metav1.ConditionFalse || cred.Reason != string(vmcore.CertificateExpired) || !strings.Contains(cred.Message, "expired") ||
		!strings.Contains(cred.Message, "(lifetime 58m0s, not the 1m30s asked") {
		t.Errorf("CredentialsValid with a lapsed certificate: %+v", cred)
	}
	if c := findCondition(vm.Status.Conditions, v1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("Ready with a lapsed certificate: %+v", c)
	}

	// The entry maps to its VM by its label, wherever it is.
	if reqs := f.r.vmsOfEntry(ctx, &networkingv1.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{Namespace: "vmns", Labels: map[string]string{workloadfiles.VMLabel: "vm1"}}}); len(reqs) != 1 || reqs[0].Name != "vm1" {
		t.Errorf("vmsOfEntry: %v", reqs)
	}
}

// putEntry writes (or rewrites) the group's autoregistered entry name at
// addr, as istiod does for the VM's proxy: labelled with the VM's name,
// connected at connected (zero: disconnected) and Healthy as probed then.
func (f *fixture) putEntry(t *testing.T, name, addr string, connected time.Time) {
	t.Helper()
	ctx := context.Background()
	we := &networkingv1.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "vmns",
		Labels: map[string]string{workloadfiles.VMLabel: "vm1"}, Annotations: map[string]string{annotationGroup: "app"}},
		Spec: networkingapi.WorkloadEntry{Address: addr}}
	if connected.IsZero() {
		we.Annotations["istio.io/disconnectedAt"] = time.Now().Format(time.RFC3339Nano)
	} else {
		we.Annotations[annotationConnectedAt] = connected.Format(time.RFC3339Nano)
		we.Status.Conditions = []*metaapi.IstioCondition{{Type: "Healthy", Status: "True", LastProbeTime: timestamppb.New(connected)}}
	}
	entries := f.r.Kube.Istio.NetworkingV1().WorkloadEntries("vmns")
	entries.Delete(ctx, name, metav1.DeleteOptions{})
	if _, err := entries.Create(ctx, we, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.client.Delete(ctx, we.DeepCopy())
	if err := f.client.Create(ctx, we.DeepCopy()); err != nil {
		t.Fatal(err)
	}
}

func hasEvent(events []string, reason, text string) bool {
	for _, e := range events {
		if strings.Contains(e, reason) && strings.Contains(e, text) {
			return true
		}
	}
	return false
}
