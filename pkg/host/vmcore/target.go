package vmcore

import (
	"context"
	"sync"
	"time"

	"github.com/meshvm/meshvm/pkg/host/formcache"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// Mesh is where the target's facts come from: the part of a site that
// describes the Istio a VM joins.
type Mesh interface {
	// Revision is the Istio revision new VMs join ("" is the default).
	Revision(ctx context.Context) string
	// ClusterID is the cluster's name in the mesh (the VMs' cluster.env).
	ClusterID(ctx context.Context) string
	// IstiodVersion asks the revision's running istiod its version.
	IstiodVersion(ctx context.Context, rev string) (version, from string, err error)
	// IstiodAddress is where VM vm reaches istiod.
	IstiodAddress(ctx context.Context, vm string) (string, error)
	// Sidecar is the sidecar's files of an Istio version for an architecture.
	Sidecar(ctx context.Context, arch, version string) (onboard.Sidecar, error)
}

// VersionTTL is how long a revision's istiod version is kept: istiod is
// upgraded in place while a controller runs for months, so the version is
// asked again after it, not kept for the life of the process.
const VersionTTL = time.Minute

// Targets resolves Targets and caches what is slow to learn by what it
// depends on: a revision's istiod version by revision (for VersionTTL),
// sidecar files by architecture and version (a module lookup or a registry
// request; the files of a version never change). One Targets serves every
// VM of a run, concurrently.
type Targets struct {
	mesh           Mesh
	istioNamespace string
	forms          *formcache.Cache
	// Now is the clock the versions' age is read from (time.Now when nil).
	Now func() time.Time

	mu       sync.Mutex
	versions map[string]istiodVersion
	sidecars map[string]onboard.Sidecar
}

// istiodVersion is a revision's istiod version and when it was asked.
type istiodVersion struct {
	version string
	at      time.Time
}

// NewTargets resolves targets from mesh, whose istiod runs in
// istioNamespace; forms, when set, keeps the sidecar binaries' compressed
// forms so every VM sends the same bytes.
func NewTargets(mesh Mesh, istioNamespace string, forms *formcache.Cache) *Targets {
	return &Targets{mesh: mesh, istioNamespace: istioNamespace, forms: forms, versions: map[string]istiodVersion{}, sidecars: map[string]onboard.Sidecar{}}
}

// Target is what VMs join, seen once per pass: the revision new VMs join
// and the cluster's id, with the parts that depend on the VM (its revision,
// architecture, address) looked up through the cache.
type Target struct {
	// Revision is the revision new VMs join ("" is the default).
	Revision  string
	ClusterID string
	// IstioNamespace is where istiod runs (the VM's hosts block names it).
	IstioNamespace string
	src            *Targets
}

// Snapshot resolves the target for one pass.
func (ts *Targets) Snapshot(ctx context.Context) Target {
	return Target{Revision: ts.mesh.Revision(ctx), ClusterID: ts.mesh.ClusterID(ctx), IstioNamespace: ts.istioNamespace, src: ts}
}

// IstiodVersion is the running istiod's version of revision rev, asked
// again once VersionTTL has passed; a failed lookup is not kept (an istiod
// that was not ready may be by the next pass).
func (t Target) IstiodVersion(ctx context.Context, rev string) (string, error) {
	ts := t.src
	key := workloadfiles.RevisionName(rev)
	now := time.Now
	if ts.Now != nil {
		now = ts.Now
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if v, ok := ts.versions[key]; ok && now().Sub(v.at) < VersionTTL {
		return v.version, nil
	}
	v, _, err := ts.mesh.IstiodVersion(ctx, rev)
	if err != nil {
		delete(ts.versions, key)
		return "", err
	}
	ts.versions[key] = istiodVersion{version: v, at: now()}
	return v, nil
}

// Sidecar is the sidecar's files of version for arch, looked up once.
func (t Target) Sidecar(ctx context.Context, arch, version string) (onboard.Sidecar, error) {
	ts := t.src
	key := arch + "/" + version
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if side, ok := ts.sidecars[key]; ok {
		return side, nil
	}
	side, err := ts.mesh.Sidecar(ctx, arch, version)
	if err != nil {
		return side, err
	}
	side.Forms = ts.forms
	ts.sidecars[key] = side
	return side, nil
}

// IstiodAddress is where vm reaches istiod. It is not cached: on the lab it
// is each VM's own, elsewhere the site keeps it.
func (t Target) IstiodAddress(ctx context.Context, vm string) (string, error) {
	return t.src.mesh.IstiodAddress(ctx, vm)
}
