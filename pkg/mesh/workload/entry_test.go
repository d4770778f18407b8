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

// With an index (a controller's cache), FindEntry asks it for the entries
// at the address and lists nothing from the API server; what it picks is
// judged as from a list.
func TestFindEntryFromAnIndex(t *testing.T) {
	mk := func(name, group, addr, network string) *clientnetworking.WorkloadEntry {
		return &clientnetworking.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Annotations: map[string]string{"istio.io/autoRegistrationGroup": group}},
			Spec: networking.WorkloadEntry{Address: addr, Network: network}}
	}
	byAddr := map[string][]*clientnetworking.WorkloadEntry{
		"10.0.0.2": {mk("other-10.0.0.2", "other", "10.0.0.2", ""), mk("g-10.0.0.2-net", "g", "10.0.0.2", "net")},
	}
	api := istiofake.NewSimpleClientset()
	var asked []string
	c := Clients{Istio: api, EntriesAt: func(_ context.Context, ns, addr string) ([]*clientnetworking.WorkloadEntry, error) {
		asked = append(asked, ns+"/"+addr)
		return byAddr[addr], nil
	}}
	s := Spec{Namespace: "ns", Group: "g", Network: "net"}
	if e, ok, err := FindEntry(context.Background(), c, s, "10.0.0.2"); err != nil || !ok || e.Name != "g-10.0.0.2-net" {
		t.Errorf("FindEntry: %+v %v %v", e, ok, err)
	}
	if _, ok, err := FindEntry(context.Background(), c, s, "10.0.0.3"); err != nil || ok {
		t.Errorf("no entry at 10.0.0.3: found %v, %v", ok, err)
	}
	if len(asked) != 2 || asked[0] != "ns/10.0.0.2" {
		t.Errorf("the index was asked %v", asked)
	}
	if n := len(api.Actions()); n != 0 {
		t.Errorf("%d calls to the API server, want none: %v", n, api.Actions())
	}
}
