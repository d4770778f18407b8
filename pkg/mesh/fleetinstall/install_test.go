package fleetinstall

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// The rollout as kubectl rollout status judges it: every replica updated
// and available, the old ones gone; a pod whose node lacks the image
// fails at once, naming the node; other waits are described.
func TestRolloutJudgement(t *testing.T) {
	ctx := context.Background()
	two := int32(2)
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: Name, Namespace: DefaultNamespace, Generation: 2}, Spec: appsv1.DeploymentSpec{Replicas: &two}}
	pod := func(name, node, reason string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: DefaultNamespace, Labels: map[string]string{nameLabel: Name}},
			Spec: corev1.PodSpec{NodeName: node},
			Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "controller",
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}}}}}
	}
	for _, c := range []struct {
		name   string
		status appsv1.DeploymentStatus
		pods   []*corev1.Pod
		done   bool
		want   string
	}{
		{"not observed yet", appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 2}, nil, false, "2/2 updated, 2 available"},
		{"an old replica left", appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 3, UpdatedReplicas: 2, AvailableReplicas: 2}, nil, false, "2/2 updated"},
		{"crashing", appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 1},
			[]*corev1.Pod{pod("p1", "k3s-server", "CrashLoopBackOff")}, false, "pod p1: CrashLoopBackOff"},
		{"image missing on a node", appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2},
			[]*corev1.Pod{pod("p2", "k3s-agent-3", "ErrImageNeverPull")}, false, "error: pod p2 on node k3s-agent-3: the controller image is not in that node's containerd"},
		{"done", appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 2}, nil, true, ""},
	} {
		dep := d.DeepCopy()
		dep.Status = c.status
		kc := fake.NewClientset(dep)
		for _, p := range c.pods {
			kc.CoreV1().Pods(DefaultNamespace).Create(ctx, p, metav1.CreateOptions{})
		}
		state, done, err := rollout(ctx, kc, DefaultNamespace)
		got := state
		if err != nil {
			got = "error: " + err.Error()
		}
		if done != c.done || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, done %v; want %q, done %v", c.name, got, done, c.want, c.done)
		}
	}
	if _, _, err := rollout(ctx, fake.NewClientset(), DefaultNamespace); err == nil || !strings.Contains(err.Error(), "the controller's Deployment meshvm-system/meshvm-controller") {
		t.Errorf("no Deployment: %v", err)
	}
}
