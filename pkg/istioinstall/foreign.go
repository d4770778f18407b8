package istioinstall

import (
	"context"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/pkg/ownership"
)

// ForeignControlPlane names what shows an Istio control plane meshvm did
// not install: istiod Deployments (label app=istiod, any namespace) and mesh
// config ConfigMaps (istio or istio-<revision>, label istio.io/rev) that
// meshvm neither labelled nor applied. Empty when there is none.
func ForeignControlPlane(ctx context.Context, kc kubernetes.Interface) ([]string, error) {
	var out []string
	deps, err := kc.AppsV1().Deployments("").List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil {
		return nil, fmt.Errorf("look for istiod Deployments: %w", err)
	}
	for i := range deps.Items {
		if d := &deps.Items[i]; !ownership.Owned(d) {
			out = append(out, "Deployment "+d.Namespace+"/"+d.Name)
		}
	}
	cms, err := kc.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{LabelSelector: "istio.io/rev"})
	if err != nil {
		return nil, fmt.Errorf("look for Istio's mesh config: %w", err)
	}
	for i := range cms.Items {
		cm := &cms.Items[i]
		if _, mesh := cm.Data["mesh"]; mesh && (cm.Name == "istio" || strings.HasPrefix(cm.Name, "istio-")) && !ownership.Owned(cm) {
			out = append(out, "ConfigMap "+cm.Namespace+"/"+cm.Name)
		}
	}
	return out, nil
}

// ForeignControlPlaneError says what up does about a control plane of
// yours: nothing, and why.
func ForeignControlPlaneError(found []string) error {
	return fmt.Errorf("an Istio control plane meshvm did not install is in this cluster (%s): meshvm changes none of it. "+
		"Joining VMs to an Istio of yours is not built yet: use a cluster without Istio, or one whose Istio hostctl installed", strings.Join(found, ", "))
}
