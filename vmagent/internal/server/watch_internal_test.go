package server

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// One look serves every watcher; looks run only while someone watches; a
// watcher that reads nothing holds one state, the newest.
func TestWatchHubLooksOnlyWhileWatchedAndCoalesces(t *testing.T) {
	var looks atomic.Int64
	var pid atomic.Uint32
	h := newWatchHub(func(context.Context) *agentv1.WatchResponse {
		looks.Add(1)
		return &agentv1.WatchResponse{Sidecar: &agentv1.SidecarState{MainPid: pid.Load()}}
	}, 5*time.Millisecond)

	a, leaveA := h.subscribe()
	b, leaveB := h.subscribe()
	first := <-a.states
	if got := (<-b.states).GetSidecar().GetMainPid(); got != first.GetSidecar().GetMainPid() {
		t.Fatalf("watchers saw different first states")
	}
	// Many changes while b reads nothing: b is left with one, the newest.
	for i := uint32(1); i <= 20; i++ {
		pid.Store(i)
		deadline := time.Now().Add(5 * time.Second)
		for (<-a.states).GetSidecar().GetMainPid() != i {
			if time.Now().After(deadline) {
				t.Fatalf("change %d never reached watcher a", i)
			}
		}
	}
	if n := len(b.states); n != 1 {
		t.Fatalf("the slow watcher holds %d states, want 1", n)
	}
	if got := (<-b.states).GetSidecar().GetMainPid(); got != 20 {
		t.Errorf("the slow watcher's state has pid %d, want the newest, 20", got)
	}
	// Unchanged looks are not offered again.
	time.Sleep(50 * time.Millisecond)
	if len(a.states) != 0 {
		t.Errorf("an unchanged look was offered to a watcher")
	}

	leaveA()
	leaveB()
	time.Sleep(20 * time.Millisecond) // a look in flight finishes
	after := looks.Load()
	time.Sleep(100 * time.Millisecond)
	if n := looks.Load() - after; n != 0 {
		t.Errorf("%d looks ran with nobody watching", n)
	}
	// A new watcher gets a fresh look, not the state from before.
	pid.Store(99)
	c, leaveC := h.subscribe()
	defer leaveC()
	if got := (<-c.states).GetSidecar().GetMainPid(); got != 99 {
		t.Errorf("a new watcher got pid %d, want a fresh look (99)", got)
	}
}

func TestChangedTopicsNamesEachPart(t *testing.T) {
	base := &agentv1.WatchResponse{
		Sidecar:   &agentv1.SidecarState{ActiveState: "active"},
		Addresses: []string{"10.0.0.2"},
	}
	tests := []struct {
		name   string
		change func(*agentv1.WatchResponse)
		want   agentv1.WatchTopic
	}{
		{"sidecar", func(r *agentv1.WatchResponse) { r.Sidecar.ActiveState = "failed" }, agentv1.WatchTopic_WATCH_TOPIC_SIDECAR},
		{"certificate", func(r *agentv1.WatchResponse) { r.WorkloadCertificate = &agentv1.CertificateInfo{Subject: "x"} }, agentv1.WatchTopic_WATCH_TOPIC_CERTIFICATE},
		{"token", func(r *agentv1.WatchResponse) { r.Token = &agentv1.TokenInfo{Subject: "x"} }, agentv1.WatchTopic_WATCH_TOPIC_TOKEN},
		{"addresses", func(r *agentv1.WatchResponse) { r.Addresses = []string{"10.0.0.3"} }, agentv1.WatchTopic_WATCH_TOPIC_ADDRESSES},
		{"app", func(r *agentv1.WatchResponse) { r.App = &agentv1.ProbeResponse{Ok: true} }, agentv1.WatchTopic_WATCH_TOPIC_APP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			changed := protoClone(base)
			tt.change(changed)
			got := changedTopics(base, changed)
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("got %v, want [%v]", got, tt.want)
			}
		})
	}
	later := protoClone(base)
	later.ObservedAt, later.Sequence = nil, 7
	if got := changedTopics(base, later); len(got) != 0 {
		t.Errorf("a later look of the same state changed %v", got)
	}
}
