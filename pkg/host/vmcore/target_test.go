package vmcore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/host/onboard"
)

// countingMesh answers like a site and counts what it is asked.
type countingMesh struct {
	versions map[string]string
	asked    map[string]int
}

func (m *countingMesh) Revision(context.Context) string  { m.asked["revision"]++; return "canary" }
func (m *countingMesh) ClusterID(context.Context) string { m.asked["cluster"]++; return "c1" }
func (m *countingMesh) IstiodVersion(_ context.Context, rev string) (string, string, error) {
	m.asked["version "+rev]++
	v, ok := m.versions[rev]
	if !ok {
		return "", "", errors.New("no istiod of revision " + rev)
	}
	return v, "test", nil
}
func (m *countingMesh) IstiodAddress(_ context.Context, vm string) (string, error) {
	m.asked["address "+vm]++
	return "10.1.0.1", nil
}
func (m *countingMesh) Sidecar(_ context.Context, arch, version string) (onboard.Sidecar, error) {
	m.asked["sidecar "+arch+"/"+version]++
	return onboard.Sidecar{PilotAgent: "/cache/" + arch + "/" + version + "/pilot-agent"}, nil
}

func TestTargetsAskOncePerWhatTheyDependOn(t *testing.T) {
	ctx := context.Background()
	m := &countingMesh{versions: map[string]string{"canary": "1.31.0", "": "1.30.2"}, asked: map[string]int{}}
	ts := NewTargets(m, "istio-system", nil)
	for range 3 {
		tg := ts.Snapshot(ctx)
		if tg.Revision != "canary" || tg.ClusterID != "c1" {
			t.Fatalf("got %+v", tg)
		}
		for _, rev := range []string{"canary", "", "default"} {
			if _, err := tg.IstiodVersion(ctx, rev); err != nil {
				t.Fatal(err)
			}
		}
		for _, arch := range []string{"amd64", "arm64"} {
			if side, err := tg.Sidecar(ctx, arch, "1.31.0"); err != nil || side.PilotAgent != "/cache/"+arch+"/1.31.0/pilot-agent" {
				t.Fatalf("sidecar %s: got %+v %v", arch, side, err)
			}
		}
	}
	// "" and "default" are one revision: asked once between them.
	for what, want := range map[string]int{"revision": 3, "cluster": 3, "version canary": 1, "version ": 1, "version default": 0,
		"sidecar amd64/1.31.0": 1, "sidecar arm64/1.31.0": 1} {
		if m.asked[what] != want {
			t.Errorf("%s asked %d times, want %d", what, m.asked[what], want)
		}
	}
}

func TestTargetsDoNotCacheFailures(t *testing.T) {
	ctx := context.Background()
	m := &countingMesh{versions: map[string]string{}, asked: map[string]int{}}
	tg := NewTargets(m, "istio-system", nil).Snapshot(ctx)
	for range 2 {
		if _, err := tg.IstiodVersion(ctx, "canary"); err == nil {
			t.Fatal("got no error for a revision with no istiod")
		}
	}
	if m.asked["version canary"] != 2 {
		t.Errorf("asked %d times, want 2: an istiod that was not ready may be by the next pass", m.asked["version canary"])
	}
}

// An istiod upgraded in place under a long-running controller: its version
// is asked again once VersionTTL has passed, and a failed lookup neither
// is kept nor leaves the old version standing.
func TestTargetsAskTheVersionAgainAfterTTL(t *testing.T) {
	ctx := context.Background()
	m := &countingMesh{versions: map[string]string{"canary": "1.30.2"}, asked: map[string]int{}}
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	ts := NewTargets(m, "istio-system", nil)
	ts.Now = func() time.Time { return now }
	ask := func(want string) {
		t.Helper()
		v, err := ts.Snapshot(ctx).IstiodVersion(ctx, "canary")
		if err != nil || v != want {
			t.Fatalf("at %s: got %q %v, want %q", now.Format(time.TimeOnly), v, err, want)
		}
	}
	ask("1.30.2")
	m.versions["canary"] = "1.31.0" // istiod upgraded
	now = now.Add(VersionTTL - time.Second)
	ask("1.30.2")
	if m.asked["version canary"] != 1 {
		t.Fatalf("asked %d times within the TTL, want 1", m.asked["version canary"])
	}
	now = now.Add(time.Second)
	ask("1.31.0")
	if m.asked["version canary"] != 2 {
		t.Fatalf("asked %d times once the TTL passed, want 2", m.asked["version canary"])
	}
	// istiod goes away: the error comes through, and the next lookup asks again.
	delete(m.versions, "canary")
	now = now.Add(VersionTTL)
	for range 2 {
		if v, err := ts.Snapshot(ctx).IstiodVersion(ctx, "canary"); err == nil {
			t.Fatalf("got %q, no error, for a revision whose istiod is gone", v)
		}
	}
	if m.asked["version canary"] != 4 {
		t.Errorf("asked %d times, want 4: a failed lookup is never kept", m.asked["version canary"])
	}
}
