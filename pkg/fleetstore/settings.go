package fleetstore

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/pkg/mesh/ownership"
)

// SettingsConfigMap is the ConfigMap, in the store's namespace, holding
// what the VMs join that the cluster does not say by itself. hostctl writes
// it (fleet adopt, up); the controller reads it at each pass.
const SettingsConfigMap = "meshvm-fleet"

// Settings are the mesh's facts for every VM. Keys of the ConfigMap:
// clusterID, istioNamespace, istiodAddress, imageHub, istiodVersions (JSON,
// revision to version).
type Settings struct {
	// ClusterID is the cluster's name in the mesh (the VMs' cluster.env).
	ClusterID string `json:"clusterID"`
	// IstioNamespace is where istiod runs (istio-system when empty).
	IstioNamespace string `json:"istioNamespace,omitempty"`
	// IstiodAddress is where the VMs reach istiod (the east-west gateway's
	// address); a MeshVM's meshvm.io/istiod-address annotation overrides it.
	IstiodAddress string `json:"istiodAddress,omitempty"`
	// ImageHub is where the sidecar's image (proxyv2) is pulled from when
	// the controller has no sidecar directory.
	ImageHub string `json:"imageHub,omitempty"`
	// IstiodVersions are the running istiods' versions by revision
	// ("default" for the default), for an istiod that is not a Deployment
	// the controller can ask (the lab's processes).
	IstiodVersions map[string]string `json:"istiodVersions,omitempty"`
}

func (s Settings) data() (map[string]string, error) {
	d := map[string]string{"clusterID": s.ClusterID}
	for k, v := range map[string]string{"istioNamespace": s.IstioNamespace, "istiodAddress": s.IstiodAddress, "imageHub": s.ImageHub} {
		if v != "" {
			d[k] = v
		}
	}
	if len(s.IstiodVersions) > 0 {
		b, err := json.Marshal(s.IstiodVersions)
		if err != nil {
			return nil, err
		}
		d["istiodVersions"] = string(b)
	}
	return d, nil
}

// LoadSettings reads the settings in namespace ns.
func LoadSettings(ctx context.Context, kube kubernetes.Interface, ns string) (Settings, error) {
	cm, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, SettingsConfigMap, metav1.GetOptions{})
	if err != nil {
		return Settings{}, fmt.Errorf("fleet settings (ConfigMap %s/%s): %w: they are written when a state directory is adopted into the cluster", ns, SettingsConfigMap, err)
	}
	d := cm.Data
	s := Settings{ClusterID: d["clusterID"], IstioNamespace: d["istioNamespace"], IstiodAddress: d["istiodAddress"], ImageHub: d["imageHub"]}
	if v := d["istiodVersions"]; v != "" {
		if err := json.Unmarshal([]byte(v), &s.IstiodVersions); err != nil {
			return Settings{}, fmt.Errorf("fleet settings (ConfigMap %s/%s) istiodVersions: %w: want a JSON object of revision to version", ns, SettingsConfigMap, err)
		}
	}
	if s.IstioNamespace == "" {
		s.IstioNamespace = "istio-system"
	}
	return s, nil
}

// PutSettings writes the settings in namespace ns, only when they change.
func PutSettings(ctx context.Context, kube kubernetes.Interface, ns string, s Settings) (ownership.Action, error) {
	d, err := s.data()
	if err != nil {
		return "", err
	}
	api := kube.CoreV1().ConfigMaps(ns)
	cm, err := api.Get(ctx, SettingsConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = api.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: SettingsConfigMap, Namespace: ns, Labels: ownership.Labels(nil)}, Data: d}, metav1.CreateOptions{})
		return ownership.Created, err
	case err != nil:
		return "", err
	case maps.Equal(cm.Data, d):
		return ownership.Unchanged, nil
	}
	cm = cm.DeepCopy()
	cm.Data = d
	_, err = api.Update(ctx, cm, metav1.UpdateOptions{})
	return ownership.Updated, err
}
