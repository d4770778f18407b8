package vmctl

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshvm/meshvm/pkg/fleetstore"
)

// The Secret cache holds the store's CA and the controller's identity, the
// two read from it, and no VM's records (as fleetstore labels them).
func TestSecretCacheHoldsTheStoreNotTheRecords(t *testing.T) {
	ctx := context.Background()
	kc := fake.NewClientset()
	s := fleetstore.New(ctx, kc, fleetstore.DefaultNamespace, "vmns")
	if _, err := s.CA(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AgentTLS("vm1"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetToken("vm1", []byte("token")); err != nil {
		t.Fatal(err)
	}
	list, err := kc.CoreV1().Secrets(fleetstore.DefaultNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	scope := Scope{Namespace: fleetstore.DefaultNamespace}
	sel := storeSecrets()
	records := 0
	for _, sec := range list.Items {
		cached := sel.Matches(labels.Set(sec.Labels))
		if want := scope.cachedSecret(sec.Namespace, sec.Name); cached != want {
			t.Errorf("Secret %s (labels %v): in the cache %v, read from it %v", sec.Name, sec.Labels, cached, want)
		}
		if !cached {
			records++
		}
	}
	if len(list.Items) != 3 || records != 1 {
		t.Fatalf("want the CA, the identity and one VM's records, got %d Secrets (%d not cached)", len(list.Items), records)
	}
}
