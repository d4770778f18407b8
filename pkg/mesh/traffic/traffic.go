// Package traffic checks traffic from inside the mesh: a short-lived pod
// with a sidecar (its namespace has injection on) fetches a URL, and its
// output is the answer. It is hostctl verify's mesh-to-VM check.
package traffic

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/pkg/mesh/ownership"
)

// Namespace holds the client pods; injection is on so they are in the mesh.
const Namespace = "meshvm-verify"

// DefaultImage runs curl.
const DefaultImage = "docker.io/curlimages/curl:8.11.1"

// Fetch runs a pod that GETs url from inside the mesh and returns what it
// printed. The pod is deleted afterwards whatever happened; a pod that did
// not run is explained (no node, image pull, still pending).
func Fetch(ctx context.Context, kc kubernetes.Interface, image, url string, timeout time.Duration) (string, error) {
	if err := ensureNamespace(ctx, kc); err != nil {
		return "", err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "meshvm-verify-", Namespace: Namespace,
			// The sidecar must exit with the client, or the pod never completes.
			Annotations: map[string]string{"proxy.istio.io/config": `{"holdApplicationUntilProxyStarts": true}`},
			Labels:      map[string]string{"app": "meshvm-verify", "sidecar.istio.io/inject": "true"}},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "curl", Image: image, Command: []string{"sh", "-c",
				`curl -sS -m 10 "$0"; rc=$?; curl -sf -XPOST http://127.0.0.1:15020/quitquitquit >/dev/null; exit $rc`, url}}},
		},
	}
	// A new namespace gets its default service account from a controller,
	// a moment later: until then the pod is refused as Forbidden. That
	// refusal is told from others by the account's absence, not its text.
	var p *corev1.Pod
	var refused error
	err := wait.PollUntilContextTimeout(ctx, time.Second, min(timeout, 30*time.Second), true, func(ctx context.Context) (bool, error) {
		var err error
		p, err = kc.CoreV1().Pods(Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if apierrors.IsForbidden(err) && !defaultAccount(ctx, kc) {
			refused = err
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		if refused != nil && !apierrors.IsForbidden(err) {
			err = fmt.Errorf("%w (still refused: %v)", err, refused)
		}
		return "", fmt.Errorf("create the client pod in %s: %w", Namespace, err)
	}
	defer kc.CoreV1().Pods(Namespace).Delete(context.WithoutCancel(ctx), p.Name, metav1.DeleteOptions{})
	var last *corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		last, err = kc.CoreV1().Pods(Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return last.Status.Phase == corev1.PodSucceeded || last.Status.Phase == corev1.PodFailed, nil
	})
	if err != nil {
		return "", fmt.Errorf("client pod %s/%s did not finish in %s: %s", Namespace, p.Name, timeout, why(last))
	}
	logs, lerr := podLogs(ctx, kc, p.Name)
	if last.Status.Phase == corev1.PodFailed {
		return logs, fmt.Errorf("from the mesh, GET %s failed: %s", url, strings.TrimSpace(logs+" "+errText(lerr)))
	}
	return logs, lerr
}

func ensureNamespace(ctx context.Context, kc kubernetes.Interface) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace, Labels: map[string]string{"istio-injection": "enabled", ownership.Label: ownership.Value}}}
	if _, err := kc.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", Namespace, err)
	}
	return nil
}

// defaultAccount says whether the namespace's default service account
// exists yet (an error reading it counts as yes: the refusal is then real).
func defaultAccount(ctx context.Context, kc kubernetes.Interface) bool {
	_, err := kc.CoreV1().ServiceAccounts(Namespace).Get(ctx, "default", metav1.GetOptions{})
	return !apierrors.IsNotFound(err)
}

func podLogs(ctx context.Context, kc kubernetes.Interface, name string) (string, error) {
	rc, err := kc.CoreV1().Pods(Namespace).GetLogs(name, &corev1.PodLogOptions{Container: "curl"}).Stream(ctx)
	if err != nil {
		return "", fmt.Errorf("logs of %s: %w", name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 4<<10))
	return string(b), err
}

// why explains a pod that has not finished.
func why(p *corev1.Pod) string {
	if p == nil {
		return "it was never seen"
	}
	for _, c := range p.Status.ContainerStatuses {
		if w := c.State.Waiting; w != nil && w.Reason != "" {
			return fmt.Sprintf("container %s waits: %s %s", c.Name, w.Reason, w.Message)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue {
			return fmt.Sprintf("not scheduled: %s %s", c.Reason, c.Message)
		}
	}
	if p.Spec.NodeName == "" {
		return "no node took it (is there a scheduler and a Ready node?)"
	}
	return "phase " + string(p.Status.Phase)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
