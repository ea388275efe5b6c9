from django.http import HttpResponse

from .models import Note


def index(request):
    return HttpResponse("Hello from Django on slugrunner!\n", content_type="text/plain")


def notes(request):
    """Needs the table created by the release process (migrate)."""
    Note.objects.create(text=request.GET.get("text", "hello"))
    return HttpResponse(f"notes: {Note.objects.count()}\n", content_type="text/plain")
