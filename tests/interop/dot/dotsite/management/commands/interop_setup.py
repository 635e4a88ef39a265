"""Creates (or resets) the interop user and the public authorization-code client."""
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from oauth2_provider.models import get_application_model


class Command(BaseCommand):
    help = "Create the interop test user and a public authorization-code client"

    def add_arguments(self, parser):
        parser.add_argument("--username", default="alice")
        parser.add_argument("--password", default="alice-password")
        parser.add_argument("--client-id", default="dot-public")
        parser.add_argument("--redirect-uri", default="http://127.0.0.1:9/cb")

    def handle(self, *args, **opts):
        User = get_user_model()
        user, _ = User.objects.get_or_create(username=opts["username"])
        user.set_password(opts["password"])
        user.save()

        Application = get_application_model()
        Application.objects.filter(client_id=opts["client_id"]).delete()
        Application.objects.create(
            name="DOT interop public client",
            client_id=opts["client_id"],
            client_type=Application.CLIENT_PUBLIC,
            authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
            redirect_uris=opts["redirect_uri"],
            skip_authorization=False,
            user=user,
        )
        self.stderr.write(f"user {opts['username']}, public client {opts['client_id']} -> {opts['redirect_uri']}")
