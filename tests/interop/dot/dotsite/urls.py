from django.contrib.auth.views import LoginView
from django.urls import include, path

urlpatterns = [
    # DOT's stock URLs: /o/authorize/, /o/token/, ...
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("accounts/login/", LoginView.as_view(), name="login"),
]
