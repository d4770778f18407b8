package traffic

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// A pod refused while the namespace lacks its default service account is
// tried again once the account exists; any other refusal ends Fetch at once.
func TestFetchWaitsForTheDefaultServiceAccount(t *testing.T) {
	kc := fake.NewClientset()
	creates := 0
	kc.PrependReactor("get", "serviceaccounts", func(k8stesting.Action) (bool, runtime.Object, error) {
		// Fetch looks after the first refusal: not there yet, then the
		// controller catches up.
		kc.Tracker().Add(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: Namespace}})
		return true, nil, apierrors.NewNotFound(corev1.Resource("serviceaccounts"), "default")
	})
	kc.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		creates++
		if _, err := kc.Tracker().Get(corev1.SchemeGroupVersion.WithResource("serviceaccounts"), Namespace, "default"); err != nil {
			return true, nil, apierrors.NewForbidden(corev1.Resource("pods"), "", nil)
		}
		pod := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod).DeepCopy()
		pod.Name, pod.Status.Phase = "meshvm-verify-1", corev1.PodSucceeded
		return true, pod, kc.Tracker().Add(pod)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := Fetch(ctx, kc, DefaultImage, "http://x/", 10*time.Second); err != nil {
		t.Fatalf("got %v after %d creates, want the pod created once the account exists", err, creates)
	}
	if creates != 2 {
		t.Errorf("got %d creates, want 2 (one refused, one created)", creates)
	}

	// The account exists: a Forbidden is a real refusal, reported at once.
	kc2 := fake.NewClientset(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: Namespace}})
	kc2.PrependReactor("create", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(corev1.Resource("pods"), "", nil)
	})
	start := time.Now()
	_, err := Fetch(ctx, kc2, DefaultImage, "http://x/", 10*time.Second)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "create the client pod") || time.Since(start) > 5*time.Second {
		t.Errorf("got %v after %s, want the Forbidden at once", err, time.Since(start))
	}
}
