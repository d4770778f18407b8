package vmctl

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/mesh/istioversion"
	"github.com/meshvm/meshvm/pkg/mesh/proxyimage"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// Sidecars finds the sidecar's files of an Istio version for an
// architecture: in a directory laid out as VERSION/ARCH/{pilot-agent,envoy,
// envoy_bootstrap_tmpl.json} (the lab's build, or an air-gapped copy), else
// pulled from the settings' image hub (proxyv2) into a cache.
type Sidecars struct {
	Dir     string
	Fetcher *proxyimage.Fetcher

	mu    sync.Mutex
	found map[string]onboard.Sidecar
}

func (s *Sidecars) get(ctx context.Context, hub, arch, version string) (onboard.Sidecar, error) {
	key := arch + "/" + version
	s.mu.Lock()
	defer s.mu.Unlock()
	if side, ok := s.found[key]; ok {
		return side, nil
	}
	var side onboard.Sidecar
	if s.Dir != "" {
		d := filepath.Join(s.Dir, version, arch)
		side = onboard.Sidecar{PilotAgent: filepath.Join(d, "pilot-agent"), Envoy: filepath.Join(d, "envoy"), BootstrapTemplate: filepath.Join(d, "envoy_bootstrap_tmpl.json")}
		for _, f := range []string{side.PilotAgent, side.Envoy, side.BootstrapTemplate} {
			if _, err := os.Stat(f); err != nil {
				return onboard.Sidecar{}, fmt.Errorf("sidecar of Istio %s for %s: %w: put it in %s (the controller's --sidecar-dir)", version, arch, err, d)
			}
		}
	} else {
		if hub == "" {
			return onboard.Sidecar{}, fmt.Errorf("sidecar of Istio %s for %s: no --sidecar-dir and no imageHub in the fleet settings (ConfigMap %s)", version, arch, fleetstore.SettingsConfigMap)
		}
		got, err := s.Fetcher.Fetch(ctx, proxyimage.Image(hub, version), arch)
		if err != nil {
			return onboard.Sidecar{}, err
		}
		side = onboard.Sidecar{PilotAgent: got.Path("pilot-agent"), Envoy: got.Path("envoy"), BootstrapTemplate: got.Path("envoy_bootstrap_tmpl.json")}
	}
	if s.found == nil {
		s.found = map[string]onboard.Sidecar{}
	}
	s.found[key] = side
	return side, nil
}

// mesh is vmcore.Mesh for one pass over one VM: the fleet settings, the
// cluster's istiod Deployments, and where this VM reaches istiod.
type mesh struct {
	kube     kubernetes.Interface
	settings fleetstore.Settings
	sidecars *Sidecars
	// istiod is this VM's istiod address ("" for the settings').
	istiod string
}

// Revision is unused: a MeshVM always names its revision ("" the default).
func (m mesh) Revision(context.Context) string { return "" }

func (m mesh) ClusterID(context.Context) string { return m.settings.ClusterID }

// IstiodVersion is the settings' version for the revision, else the
// running istiod Deployment's.
func (m mesh) IstiodVersion(ctx context.Context, rev string) (string, string, error) {
	name := workloadfiles.RevisionName(rev)
	if v := m.settings.IstiodVersions[name]; v != "" {
		return v, "the fleet settings", nil
	}
	v, from, err := istioversion.RunningVersion(ctx, m.kube, m.settings.IstioNamespace+"/"+workloadfiles.IstiodService(rev))
	if err != nil {
		return "", "", &RevisionNotRunning{Revision: name, Err: err}
	}
	return v, from, nil
}

func (m mesh) IstiodAddress(context.Context, string) (string, error) {
	if m.istiod != "" {
		return m.istiod, nil
	}
	if m.settings.IstiodAddress == "" {
		return "", fmt.Errorf("no istiod address: set istiodAddress in the fleet settings (ConfigMap %s) or the MeshVM's meshvm.io/istiod-address annotation", fleetstore.SettingsConfigMap)
	}
	return m.settings.IstiodAddress, nil
}

func (m mesh) Sidecar(ctx context.Context, arch, version string) (onboard.Sidecar, error) {
	return m.sidecars.get(ctx, m.settings.ImageHub, arch, version)
}

// RevisionNotRunning says no istiod serves the revision a MeshVM names.
type RevisionNotRunning struct {
	Revision string
	Err      error
}

func (e *RevisionNotRunning) Error() string {
	return fmt.Sprintf("no istiod runs revision %s (%v): install that revision, or set spec.revision to one that runs", e.Revision, e.Err)
}

func (e *RevisionNotRunning) Unwrap() error { return e.Err }
