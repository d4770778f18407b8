// Package istioversion asks a running istiod its version, apart from
// istioinstall (which links Istio's renderer): the controller needs only
// this.
package istioversion

import (
	"context"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// RunningVersion asks the istiod of Deployment ref (namespace/name) its
// version: a running pod's monitoring port answers /version through the
// API server's pod proxy (what istioctl version reads, without a
// port-forward). When no pod answers (none running, or a proxy the cluster
// refuses) it falls back to the Deployment's image tag, and from says so.
func RunningVersion(ctx context.Context, kc kubernetes.Interface, ref string) (version, from string, err error) {
	ns, name, _ := strings.Cut(ref, "/")
	d, err := kc.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", "", fmt.Errorf("istiod Deployment %s: %w", ref, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return "", "", err
	}
	pods, err := kc.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	why := "no istiod pod runs"
	if err != nil {
		why = err.Error()
	} else {
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
				continue
			}
			b, perr := kc.CoreV1().Pods(ns).ProxyGet("http", p.Name, "15014", "version", nil).DoRaw(ctx)
			if perr == nil {
				return VersionOf(string(b)), "pod " + p.Name, nil
			}
			why = fmt.Sprintf("pod %s: %v", p.Name, perr)
		}
	}
	if v := ImageVersion(d); v != "" {
		return v, "the Deployment's image (" + why + ")", nil
	}
	return "", "", fmt.Errorf("istiod %s: no version: %s, and its image names none", ref, why)
}

// VersionOf is the version in istiod's /version answer, which appends
// "-<git revision>-<build status>" to it.
func VersionOf(info string) string {
	info = strings.TrimSpace(info)
	for range 2 {
		if i := strings.LastIndexByte(info, '-'); i > 0 {
			info = info[:i]
		}
	}
	return info
}

// ImageVersion is the version in the tag of the image of Deployment d's
// discovery container ("" when a digest or nothing names one).
func ImageVersion(d *appsv1.Deployment) string {
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name != "discovery" {
			continue
		}
		image, _, _ := strings.Cut(c.Image, "@") // a digest names no version
		if i := strings.LastIndexByte(image, ':'); i >= 0 && !strings.Contains(image[i:], "/") {
			return image[i+1:]
		}
	}
	return ""
}
