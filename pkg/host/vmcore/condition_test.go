package vmcore

import (
	"testing"
	"time"
)

func TestSetKeepsTransitionTimeWhileStatusHolds(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var cs Conditions
	cs.Set(Condition{Type: Healthy, Status: False, Reason: NoEntry}, t0)
	cs.Set(Condition{Type: Healthy, Status: False, Reason: EntryNotHealthy, Message: "probe failed"}, t0.Add(time.Second))
	got, ok := cs.Get(Healthy)
	if !ok || got.Reason != EntryNotHealthy || got.Message != "probe failed" || !got.LastTransitionTime.Equal(t0) {
		t.Errorf("same status, new reason: got %+v, want the new reason with the first transition time %s", got, t0)
	}
	cs.Set(Condition{Type: Healthy, Status: True, Reason: EntryHealthy}, t0.Add(2*time.Second))
	if got, _ := cs.Get(Healthy); !got.LastTransitionTime.Equal(t0.Add(2 * time.Second)) {
		t.Errorf("status changed: got transition %s, want %s", got.LastTransitionTime, t0.Add(2*time.Second))
	}
	if len(cs) != 1 || !cs.IsTrue(Healthy) {
		t.Errorf("got %+v, want one True Healthy condition", cs)
	}
}

func TestGetUnsetIsUnknown(t *testing.T) {
	var cs Conditions
	c, ok := cs.Get(AgentReachable)
	if ok || c.Status != Unknown || c.Reason != NotObserved || cs.IsTrue(AgentReachable) {
		t.Errorf("got %+v ok %v, want Unknown NotObserved", c, ok)
	}
}
