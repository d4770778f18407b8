package workload

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	networking "istio.io/api/networking/v1alpha3"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
)

// After the VM's network changed, istiod keeps the old entry (disconnected)
// until its grace period ends: the VM's entry is the one on the workload's
// network, whichever the list returns first.
func TestEntryOnTheWorkloadNetwork(t *testing.T) {
	entry := func(name, network string, ann map[string]string) *clientnetworking.WorkloadEntry {
		a := map[string]string{"istio.io/autoRegistrationGroup": "g"}
		for k, v := range ann {
			a[k] = v
		}
		return &clientnetworking.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Annotations: a},
			Spec: networking.WorkloadEntry{Address: "10.0.0.2", Network: network}}
	}
	stale := entry("g-10.0.0.2-old", "old", map[string]string{"istio.io/disconnectedAt": "2026-12-02T03:31:01Z"})
	live := entry("g-10.0.0.2-new", "new", map[string]string{"istio.io/connectedAt": "2026-12-02T03:31:02Z"})
	s := Spec{Namespace: "ns", Group: "g", Network: "new"}
	for _, order := range [][]*clientnetworking.WorkloadEntry{{stale, live}, {live, stale}} {
		c := Clients{Istio: istiofake.NewSimpleClientset(order[0], order[1])}
		e, ok, err := FindEntry(context.Background(), c, s, "10.0.0.2")
		if err != nil || !ok || e.Name != live.Name {
			t.Errorf("FindEntry: %s %v %v, want %s", e.Name, ok, err, live.Name)
		}
		all, err := Entries(context.Background(), c, s)
		if err != nil || all["10.0.0.2"].Name != live.Name {
			t.Errorf("Entries: %+v %v, want %s", all, err, live.Name)
		}
	}
	// On one network, the connected entry.
	s.Network = "other"
	c := Clients{Istio: istiofake.NewSimpleClientset(stale, live)}
	if e, _, _ := FindEntry(context.Background(), c, s, "10.0.0.2"); e.Name != live.Name {
		t.Errorf("neither on the network: %s, want the connected %s", e.Name, live.Name)
	}
}
