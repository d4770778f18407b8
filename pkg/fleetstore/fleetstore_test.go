package fleetstore_test

import (
	"context"
	"encoding/pem"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshvm/meshvm/lab/cluster/clustertest"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/host/vmcore/storetest"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

func TestContractOnAFakeClientset(t *testing.T) {
	storetest.Run(t, func(t *testing.T, vms ...string) vmcore.Store {
		return fleetstore.New(context.Background(), fake.NewClientset(), "", "vmns")
	})
}

// The contract on the lab's real kube-apiserver: each run in a namespace
// of its own, as a second cluster would be.
func TestContractOnTheAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	rc, _ := clustertest.Start(ctx, t)
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	storetest.Run(t, func(t *testing.T, vms ...string) vmcore.Store {
		n++
		ns := "store-" + string(rune('a'+n))
		if err := fleetstore.EnsureNamespace(ctx, kc, ns); err != nil {
			t.Fatal(err)
		}
		return fleetstore.New(ctx, kc, ns, "vmns")
	})
	// Two stores (two passes, or hostctl and the controller) agree on one CA.
	a, err := fleetstore.New(ctx, kc, "store-b", "vmns").CA()
	if err != nil {
		t.Fatal(err)
	}
	b, err := fleetstore.New(ctx, kc, "store-b", "vmns").CA()
	if err != nil || string(a.CertPEM()) != string(b.CertPEM()) {
		t.Errorf("a second store's CA differs (%v)", err)
	}
}

// A record is written only when it changes, and a pass's reads are served
// from what it read once.
func TestWritesOnlyOnChange(t *testing.T) {
	kc := fake.NewClientset()
	ctx := context.Background()
	s := fleetstore.New(ctx, kc, "", "vmns")
	files := workloadfiles.Files{Token: []byte("tok"), ClusterEnv: []byte("A=1")}
	for range 3 {
		if err := s.SetFiles("vm1", files); err != nil {
			t.Fatal(err)
		}
		if err := s.SetAddress("vm1", "10.0.0.7"); err != nil {
			t.Fatal(err)
		}
		if err := s.SetJoined("vm1", vmcore.Joined{Revision: "canary"}); err != nil {
			t.Fatal(err)
		}
	}
	// Another pass with the same records writes nothing.
	s = fleetstore.New(ctx, kc, "", "vmns")
	s.SetFiles("vm1", files)
	s.SetAddress("vm1", "10.0.0.7")
	if tok, _ := s.Token("vm1"); string(tok) != "tok" {
		t.Errorf("token %q", tok)
	}
	writes, gets := 0, 0
	for _, a := range kc.Actions() {
		switch a.(type) {
		case k8stesting.CreateAction, k8stesting.UpdateAction:
			writes++
		case k8stesting.GetAction:
			gets++
		}
	}
	// One create, then one update each for the address and the revision.
	if writes != 3 || gets != 2 {
		t.Errorf("%d writes and %d reads, want 3 writes (one per change) and 2 reads (one per store)", writes, gets)
	}
	if sec, err := kc.CoreV1().Secrets(fleetstore.DefaultNamespace).Get(ctx, fleetstore.RecordName("vmns", "vm1"), metav1.GetOptions{}); err != nil ||
		sec.Labels["app.kubernetes.io/managed-by"] != "meshvm" || sec.Labels["meshvm.io/vm"] != "vm1" {
		t.Errorf("record Secret: %v %+v", err, sec)
	}
}

// Passes that call agents at once agree on one controller identity: one
// that finds another pass wrote it first takes that one.
func TestAPassTakesTheIdentityAnotherWroteFirst(t *testing.T) {
	kc := fake.NewClientset()
	ctx := context.Background()
	ca, err := fleetstore.New(ctx, kc, "", "vmns").CA()
	if err != nil {
		t.Fatal(err)
	}
	other, err := statedir.IssueClient(ca, fleetstore.ControllerName)
	if err != nil {
		t.Fatal(err)
	}
	raced := false
	kc.PrependReactor("create", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if s := a.(k8stesting.CreateAction).GetObject().(*corev1.Secret); s.Name == fleetstore.IdentitySecret && !raced {
			raced = true // the other pass's write lands just before this one's
			kc.Tracker().Add(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace},
				Data: map[string][]byte{corev1.TLSCertKey: other.Cert, corev1.TLSPrivateKeyKey: other.Key}})
		}
		return false, nil, nil
	})
	cfg, err := fleetstore.New(ctx, kc, "", "vmns").AgentTLS("10.0.0.7")
	if err != nil || !raced {
		t.Fatalf("got %v (raced %v), want the other pass's identity taken", err, raced)
	}
	block, _ := pem.Decode(other.Cert)
	if string(cfg.Certificates[0].Certificate[0]) != string(block.Bytes) {
		t.Error("the pass calls agents with an identity of its own, not the one written")
	}
}

// A Batched store writes a pass's changes of a VM's records once, at
// Flush, and nothing before; a second Flush writes nothing.
func TestBatchedWritesOncePerVM(t *testing.T) {
	kc := fake.NewClientset()
	ctx := context.Background()
	writes := func() (n int) {
		for _, a := range kc.Actions() {
			switch a.(type) {
			case k8stesting.CreateAction, k8stesting.UpdateAction:
				n++
			}
		}
		return n
	}
	for pass, want := range []string{"10.0.0.7", "10.0.0.8"} {
		s := fleetstore.New(ctx, kc, "", "vmns", fleetstore.Batched())
		before := writes()
		if err := s.SetFiles("vm1", workloadfiles.Files{Token: []byte{'t', byte('0' + pass)}, ClusterEnv: []byte("A=1")}); err != nil {
			t.Fatal(err)
		}
		s.SetAddress("vm1", want)
		s.SetJoined("vm1", vmcore.Joined{Revision: "canary"})
		if addr, _ := s.Address("vm1"); addr != want {
			t.Errorf("pass %d: the store reads %q back, want what it was given", pass, addr)
		}
		if n := writes() - before; n != 0 {
			t.Errorf("pass %d: %d writes before Flush", pass, n)
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		if n := writes() - before; n != 1 {
			t.Errorf("pass %d: %d writes, want 1", pass, n)
		}
		if addr, _ := fleetstore.New(ctx, kc, "", "vmns").Address("vm1"); addr != want {
			t.Errorf("pass %d: a fresh store reads %q, want %q", pass, addr, want)
		}
	}
}
