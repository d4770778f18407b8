package istioinstall

import (
	"context"

	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/pkg/mesh/istioversion"
)

// RunningVersion asks the istiod of Deployment ref (namespace/name) its
// version (istioversion.RunningVersion).
func RunningVersion(ctx context.Context, kc kubernetes.Interface, ref string) (version, from string, err error) {
	return istioversion.RunningVersion(ctx, kc, ref)
}

// VersionOf is the version in istiod's /version answer.
func VersionOf(info string) string { return istioversion.VersionOf(info) }
